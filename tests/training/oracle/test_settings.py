"""OracleSettings: defaults per provider, the environment, overrides and refusals."""

from __future__ import annotations

import pytest

from scoring.exceptions import FluxscoreError
from training.oracle import OracleConfigError, OracleSettings


def test_settings_from_env_defaults_overrides_and_errors() -> None:
    s = OracleSettings.from_env({})
    assert (s.provider, s.base_url, s.api_key_env) == ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY")
    g = OracleSettings.from_env({"FLUXSCORE_ORACLE_PROVIDER": "gemini", "FLUXSCORE_ORACLE_RPM": "30",
                                 "FLUXSCORE_ORACLE_CONCURRENCY": "8", "FLUXSCORE_ORACLE_PRICE_INPUT": "0.3",
                                 "FLUXSCORE_ORACLE_JSON_MODE": "false", "FLUXSCORE_ORACLE_BASE_URL": "http://x/"},
                                model="gemini-x")
    assert (g.provider, g.api_key_env, g.rpm, g.concurrency, g.price_input_per_m, g.json_mode, g.base_url,
            g.model) == ("gemini", "GEMINI_API_KEY", 30.0, 8, 0.3, False, "http://x", "gemini-x")
    for bad in ({"FLUXSCORE_ORACLE_PROVIDER": "claude"}, {"FLUXSCORE_ORACLE_CONCURRENCY": "0"},
                {"FLUXSCORE_ORACLE_TIMEOUT": "soon"}, {"FLUXSCORE_ORACLE_JSON_MODE": "maybe"}):
        with pytest.raises(OracleConfigError):
            OracleSettings.from_env(bad)
    with pytest.raises(OracleConfigError, match="OPENAI_API_KEY") as info:
        s.api_key({})
    assert isinstance(info.value, FluxscoreError)


def test_cost_counts_input_and_output_per_million() -> None:
    s = OracleSettings(price_input_per_m=1.0, price_output_per_m=2.0)
    assert s.cost(1_000_000, 500_000) == pytest.approx(2.0)
