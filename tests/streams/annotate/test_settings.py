"""AnnotateSettings: safe defaults, validated values, and a secret never echoed."""

from __future__ import annotations

import pytest

from scoring.exceptions import SettingsError
from streams.annotate.settings import AnnotateSettings
from training.labels import DEFAULT_DB


def test_defaults_are_loopback_one_label_and_a_user_level_label_store() -> None:
    s = AnnotateSettings.from_env({})
    assert (s.host, s.overlap, s.filters, s.labels_db) == ("127.0.0.1", 1, ("demo", "demo_tech"), str(DEFAULT_DB))
    assert str(DEFAULT_DB) == "~/.local/share/fluxscore/labels.db"
    assert s.service_url == "http://127.0.0.1:8770"
    assert len(s.signing_key()) >= 32 and s.signing_key() != s.signing_key()  # random per start when unset


def test_the_shared_variables_are_read() -> None:
    s = AnnotateSettings.from_env({"REDIS_URL": "redis://h:1/0", "FLUXSCORE_LABELS_DB": "/x/l.db",
                                   "FLUXSCORE_ANNOTATE_OVERLAP": "3", "FLUXSCORE_ANNOTATE_FILTERS": "uplifting, demo",
                                   "FLUXSCORE_ANNOTATE_URL": "http://box:9000/"})
    assert (s.redis_url, s.labels_db, s.overlap, s.filters, s.service_url) == (
        "redis://h:1/0", "/x/l.db", 3, ("uplifting", "demo"), "http://box:9000")
    assert AnnotateSettings.from_env({"FLUXSCORE_REDIS_URL": "redis://a", "REDIS_URL": "redis://b"}).redis_url \
        == "redis://a"


@pytest.mark.parametrize(("variable", "value"), [
    ("FLUXSCORE_ANNOTATE_FILTERS", "Demo"), ("FLUXSCORE_ANNOTATE_FILTERS", "all"),
    ("FLUXSCORE_ANNOTATE_FILTERS", "demo,demo"), ("FLUXSCORE_ANNOTATE_OVERLAP", "0"),
    ("FLUXSCORE_ANNOTATE_LEASE_SECONDS", "1"), ("FLUXSCORE_ANNOTATE_URL", "ftp://x"),
    ("FLUXSCORE_ANNOTATE_PORT", "70000"),
])
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        AnnotateSettings.from_env({variable: value})
    assert caught.value.variable == variable


def test_a_short_session_secret_is_refused_without_showing_it() -> None:
    s = AnnotateSettings.from_env({"FLUXSCORE_ANNOTATE_SESSION_SECRET": "hunter2"})
    with pytest.raises(SettingsError) as caught:
        s.signing_key()
    assert caught.value.variable == "FLUXSCORE_ANNOTATE_SESSION_SECRET" and "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(s)
