from __future__ import annotations

import pytest

from streams.exceptions import StreamSettingsError
from streams.settings import PIPELINE_ROLES, StreamSettings, parse_roles


def test_defaults_are_safe_and_complete() -> None:
    s = StreamSettings.from_env({})
    assert s.kafka_bootstrap is None and s.redis_url is None
    assert s.roles == PIPELINE_ROLES
    assert s.filters == ("demo", "demo_tech")
    assert s.metrics_host == "127.0.0.1"
    assert s.metrics_port == 9108
    assert dict(s.partitions) == {"raw": 4, "screened": 4, "escalated": 4, "scores": 4, "dlq": 4}
    assert (s.prefilter_batch, s.probe_batch, s.model_batch) == (64, 64, 64)


def test_environment_overrides() -> None:
    s = StreamSettings.from_env({
        "KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "REDIS_URL": "redis://r:6379/1",
        "FLUXSCORE_ROLES": "probe, model", "FLUXSCORE_FILTERS": "a@1.0.0, b",
        "FLUXSCORE_PARTITIONS": "8", "FLUXSCORE_PARTITIONS_DLQ": "1", "FLUXSCORE_MODEL_BATCH": "4",
        "FLUXSCORE_MODEL_WITHIN": "0.25", "FLUXSCORE_METRICS_PORT": "off", "FLUXSCORE_LOG_FORMAT": "TEXT",
        "FLUXSCORE_TOPIC_PREFIX": "staging."})
    assert s.kafka_bootstrap == "k1:9092,k2:9092" and s.redis_url == "redis://r:6379/1"
    assert s.roles == ("probe", "model")
    assert s.filters == ("a@1.0.0", "b")
    assert s.partitions["raw"] == 8 and s.partitions["dlq"] == 1
    assert (s.model_batch, s.model_within) == (4, 0.25)
    assert s.metrics_port is None
    assert s.log_format == "text"
    assert s.topic_prefix == "staging."


def test_prefixed_variables_win_over_plain_ones() -> None:
    s = StreamSettings.from_env({"KAFKA_BOOTSTRAP": "plain:1", "FLUXSCORE_KAFKA_BOOTSTRAP": "prefixed:2"})
    assert s.kafka_bootstrap == "prefixed:2"


@pytest.mark.parametrize(("name", "value"), [
    ("FLUXSCORE_PROBE_BATCH", "0"), ("FLUXSCORE_PROBE_BATCH", "many"), ("FLUXSCORE_PROBE_WITHIN", "-1"),
    ("FLUXSCORE_METRICS_PORT", "70000"), ("FLUXSCORE_LOG_FORMAT", "xml"), ("FLUXSCORE_ROLES", "cook"),
    ("FLUXSCORE_PARTITIONS_RAW", "0"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(StreamSettingsError) as err:
        StreamSettings.from_env({name: value})
    assert err.value.context["variable"].startswith("FLUXSCORE_")


def test_roles() -> None:
    assert parse_roles("all") == PIPELINE_ROLES
    assert parse_roles(["model", "prefilter"]) == ("prefilter", "model")
    assert parse_roles(["prefilter,probe"]) == ("prefilter", "probe")
    assert parse_roles("shadow") == ("shadow",)
    with pytest.raises(StreamSettingsError, match="alone"):
        parse_roles("probe,shadow")
    with pytest.raises(StreamSettingsError, match="no role"):
        parse_roles(" , ")


def test_require_cluster_says_what_to_set() -> None:
    with pytest.raises(StreamSettingsError, match=r"KAFKA_BOOTSTRAP.*REDIS_URL"):
        StreamSettings.from_env({}).require_cluster()
    assert StreamSettings.from_env({"KAFKA_BOOTSTRAP": "k:1", "REDIS_URL": "redis://r"}).require_cluster() == \
        ("k:1", "redis://r")


def test_a_worker_whose_topics_cannot_carry_an_accepted_record_is_refused() -> None:
    from streams.settings import FORWARD_HEADROOM

    settings = StreamSettings.from_env({"FLUXSCORE_MAX_MESSAGE_BYTES": "1048576"})
    settings.check_limits(1_048_576 - FORWARD_HEADROOM)  # the default record limit fits with room to spare
    small = StreamSettings.from_env({"FLUXSCORE_MAX_MESSAGE_BYTES": "262144"})
    with pytest.raises(StreamSettingsError, match=r"FLUXSCORE_MAX_RECORD_BYTES \(900000\) must be at most") as info:
        small.check_limits(900_000)
    assert info.value.variable == "FLUXSCORE_MAX_RECORD_BYTES"
