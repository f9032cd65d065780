from __future__ import annotations

import pytest

from streams.exceptions import StreamSettingsError
from streams.settings import StreamSettings
from streams.topics import Topics


def test_names_carry_the_prefix_and_partitions() -> None:
    t = Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_PREFIX": "prod.", "FLUXSCORE_PARTITIONS": "6",
                                                      "FLUXSCORE_PARTITIONS_SCORES": "2"}))
    assert (t.raw.name, t.screened.name, t.escalated.name, t.dlq.name) == (
        "prod.articles.raw", "prod.articles.screened", "prod.articles.escalated", "prod.articles.dlq")
    assert t.raw.partitions == 6
    assert t.scores("demo").name == "prod.scores.demo" and t.scores("demo").partitions == 2
    assert t.all_scores.name == "prod.scores.all"
    names = [s.name for s in t.pipeline_topics(["demo", "demo_tech"])]
    assert names == ["prod.articles.raw", "prod.articles.screened", "prod.articles.escalated", "prod.articles.dlq",
                     "prod.scores.all", "prod.scores.demo", "prod.scores.demo_tech"]


def test_topic_names_are_configurable() -> None:
    t = Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_RAW": "fluxus.articles",
                                                      "FLUXSCORE_TOPIC_SCORES": "fluxscore.out"}))
    assert t.raw.name == "fluxus.articles"
    assert t.scores("x").name == "fluxscore.out.x"


def test_a_filter_named_all_is_refused() -> None:
    with pytest.raises(StreamSettingsError, match="all"):
        Topics.from_settings(StreamSettings.from_env({})).scores("all")


@pytest.mark.parametrize("prefix", ["bad prefix.", "sl/ash.", "ü."])
def test_illegal_topic_names_are_refused(prefix: str) -> None:
    with pytest.raises(StreamSettingsError, match="legal Kafka topic"):
        Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_PREFIX": prefix}))


def test_two_topics_with_one_name_are_refused() -> None:
    with pytest.raises(StreamSettingsError, match="same name"):
        Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_DLQ": "articles.raw"}))
