"""The oracle's process settings (``FLUXSCORE_ORACLE_*``): which API, which model, how hard to push it.

Part of the one settings layer (:class:`scoring.settings.FluxscoreSettings`): the README's variable
table lists every field. The API key itself is read from the variable that ``FLUXSCORE_ORACLE_API_KEY_ENV``
names (``OPENAI_API_KEY`` / ``GEMINI_API_KEY`` by default), as a :class:`~pydantic.SecretStr` that
never prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from scoring.exceptions import SettingsError
from scoring.settings import FluxscoreSettings
from training.oracle.errors import OracleConfigError

Provider = Literal["openai", "gemini"]

DEFAULTS: dict[str, dict[str, str]] = {
    "openai": {"base_url": "https://api.openai.com/v1", "model": "gpt-4.1-mini", "api_key_env": "OPENAI_API_KEY"},
    "gemini": {"base_url": "https://generativelanguage.googleapis.com", "model": "gemini-2.5-flash",
               "api_key_env": "GEMINI_API_KEY"},
}


class OracleSettings(FluxscoreSettings):
    """How to reach the oracle and how hard to push it. Empty strings take the provider's default."""

    model_config = FluxscoreSettings.model_config | {"env_prefix": "FLUXSCORE_ORACLE_"}
    doc_title: ClassVar[str] = "oracle (`fluxscore train label`, the oracle worker)"
    error: ClassVar[type[SettingsError]] = OracleConfigError

    provider: Provider = Field("openai", description="`openai` (chat-completions compatible) or `gemini`")
    base_url: str = Field("", description="API base URL (default: the provider's public API)")
    model: str = Field("", description="model name sent to the API (default `gpt-4.1-mini` / `gemini-2.5-flash`)")
    api_key_env: str = Field("", description="name of the variable holding the API key (default `OPENAI_API_KEY` "
                                             "/ `GEMINI_API_KEY`)")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    rpm: float = Field(60.0, ge=0, description="requests per minute, all workers together; `0` = no limit")
    max_attempts: int = Field(4, ge=1, description="attempts per article (HTTP failures and invalid answers)")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    price_input_per_m: float = Field(0.0, ge=0, validation_alias="FLUXSCORE_ORACLE_PRICE_INPUT",
                                     description="price per 1M input tokens (any currency)")
    price_output_per_m: float = Field(0.0, ge=0, validation_alias="FLUXSCORE_ORACLE_PRICE_OUTPUT",
                                      description="price per 1M output tokens (thinking tokens count as output)")
    max_chars: int = Field(12_000, ge=1, description="article text budget in characters")
    temperature: float = Field(0.0, ge=0, description="sampling temperature")
    json_mode: bool = Field(True, description="ask for JSON output (`response_format` / `responseMimeType`)")
    backoff: float = Field(1.0, ge=0, description="first retry delay in seconds; doubles per attempt, with jitter")
    max_wait: float = Field(60.0, ge=0, description="longest single wait, `Retry-After` included")

    @model_validator(mode="before")
    @classmethod
    def _provider_defaults(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        provider = values.get("provider") or "openai"
        if provider in DEFAULTS:
            for name in ("base_url", "model", "api_key_env"):
                if not values.get(name):
                    values[name] = DEFAULTS[provider][name]
        return values

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def api_key(self, env: Mapping[str, str] | None = None) -> SecretStr:
        """The key from the variable ``api_key_env`` names; refuses to go on without one."""
        source = os.environ if env is None else env
        key = source.get(self.api_key_env, "").strip()
        if not key:
            raise OracleConfigError(f"no API key: set the environment variable {self.api_key_env}",
                                    provider=self.provider)
        return SecretStr(key)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.price_input_per_m + output_tokens * self.price_output_per_m) / 1e6


__all__ = ["DEFAULTS", "OracleSettings", "Provider"]
