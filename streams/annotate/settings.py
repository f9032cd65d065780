"""Settings of the annotator service and its terminal commands (``fluxscore annotate …``).

Kafka (bootstrap servers, topic prefix, consumer timeouts) comes from
:class:`~streams.settings.StreamSettings`, like every other stream process; what is the annotator's own
is here. Importing this module needs no web extras, so the README's variable table can be generated on
any installation.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from scoring.exceptions import SettingsError
from scoring.settings import Flag, FluxscoreSettings, _flag
from streams.annotate.exceptions import AnnotateSettingsError
from training.labels import DEFAULT_DB

# A filter package's name (scoring.package.FilterConfig.name); `all` is the combined score topic's.
FILTER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Where the label store lives unless told: a user-level data directory, so labels outlive a checkout.


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _filter_names(value: Any) -> Any:
    if isinstance(value, str):
        value = tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple):
        bad = [v for v in value if not isinstance(v, str) or not FILTER_NAME.match(v) or v == "all"]
        if bad:
            raise ValueError(f"filter names are lower-case letters, digits and '_' (not 'all'), got {bad}")
        if len(set(value)) != len(value):
            raise ValueError("a filter is named twice")
        return tuple(value)
    return value


class AnnotateSettings(FluxscoreSettings):
    """The annotator service (``fluxscore annotate serve``) and its terminal client (``next``/``submit``/``skip``)."""

    doc_title: ClassVar[str] = "annotator (`fluxscore annotate …`)"
    error: ClassVar[type[SettingsError]] = AnnotateSettingsError

    host: str = Field("127.0.0.1", validation_alias=_alias("FLUXSCORE_ANNOTATE_HOST"),
                      description="bind address of `fluxscore annotate serve` (loopback unless set)")
    port: int = Field(8770, ge=0, le=65535, validation_alias=_alias("FLUXSCORE_ANNOTATE_PORT"),
                      description="port of `fluxscore annotate serve` (`0` picks a free one)")
    filters: Annotated[tuple[str, ...], NoDecode] = Field(
        ("demo", "demo_tech"), min_length=1, validation_alias=_alias("FLUXSCORE_ANNOTATE_FILTERS"),
        description="filter names whose `active-learning.<filter>` queue people label (nothing else is accepted)")
    lease_seconds: float = Field(900.0, ge=5.0, le=86_400.0,
                                 validation_alias=_alias("FLUXSCORE_ANNOTATE_LEASE_SECONDS"),
                                 description="seconds an item stays reserved for the annotator who pulled it; "
                                             "an abandoned item returns to the queue after this")
    overlap: int = Field(1, ge=1, le=20, validation_alias=_alias("FLUXSCORE_ANNOTATE_OVERLAP"),
                         description="independent human labels each item needs before it leaves the queue "
                                     "(above 1, the stats page shows the annotators' agreement)")
    redis_url: str | None = Field(None, validation_alias=_alias("FLUXSCORE_REDIS_URL", "REDIS_URL"),
                                  description="Redis holding the annotation queue and leases; it must persist "
                                              "(append-only file)")
    redis_prefix: str = Field("fluxscore-annotate", min_length=1,
                              validation_alias=_alias("FLUXSCORE_ANNOTATE_REDIS_PREFIX"),
                              description="prefix of the annotator's Redis keys")
    # The same variable as training.labels.LabelsSettings (documented there, once): the service's settings
    # stay one object, and both read one default.
    labels_db: str = Field(str(DEFAULT_DB), min_length=1, validation_alias=_alias("FLUXSCORE_LABELS_DB"),
                           json_schema_extra={"documented_by": "LabelsSettings"},
                           description="the label store (see `FLUXSCORE_LABELS_DB` above)")
    group: str = Field("fluxscore-annotate", min_length=1, validation_alias=_alias("FLUXSCORE_ANNOTATE_GROUP"),
                       description="Kafka consumer group that moves `active-learning.<filter>` into Redis")
    session_secret: SecretStr | None = Field(
        None, validation_alias=_alias("FLUXSCORE_ANNOTATE_SESSION_SECRET"),
        description="key that signs the session cookie (at least 32 characters); unset: a random one per start, "
                    "so a restart signs everyone out (their leased items wait for them)")
    session_hours: float = Field(12.0, gt=0.0, le=24.0 * 30,
                                 validation_alias=_alias("FLUXSCORE_ANNOTATE_SESSION_HOURS"),
                                 description="hours a web sign-in lasts")
    secure_cookie: Flag = Field(False, validation_alias=_alias("FLUXSCORE_ANNOTATE_SECURE_COOKIE"),
                                description="`1`: mark the session cookie `Secure` (when served behind HTTPS)")
    note_max: int = Field(2000, ge=0, le=20_000, validation_alias=_alias("FLUXSCORE_ANNOTATE_NOTE_MAX"),
                          description="longest note (characters) an annotator may add to a label")
    url: str | None = Field(None, validation_alias=_alias("FLUXSCORE_ANNOTATE_URL"),
                            description="the service the terminal commands talk to (unset: "
                                        "`http://<FLUXSCORE_ANNOTATE_HOST>:<FLUXSCORE_ANNOTATE_PORT>`)")
    token: SecretStr | None = Field(None, validation_alias=_alias("FLUXSCORE_ANNOTATE_TOKEN"),
                                    description="the annotator's token the terminal commands sign in with "
                                                "(from `fluxscore annotate token NAME`)")

    @field_validator("filters", mode="before")
    @classmethod
    def _filters(cls, value: Any) -> Any:
        return _filter_names(value)

    @field_validator("secure_cookie", mode="before")
    @classmethod
    def _flags(cls, value: Any) -> Any:
        return _flag(value)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @property
    def service_url(self) -> str:
        """Where the terminal commands find the service."""
        if self.url:
            return self.url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def signing_key(self) -> str:
        """The session cookie's key: the configured one, else a random one for this start only."""
        if self.session_secret is None:
            return secrets.token_urlsafe(32)
        key = self.session_secret.get_secret_value()
        # A short key makes the signed cookie guessable offline. Checked here, not in a field validator:
        # a validation error would quote the rejected value, and this one is a secret.
        if len(key) < 32:
            raise AnnotateSettingsError("FLUXSCORE_ANNOTATE_SESSION_SECRET must be at least 32 characters "
                                        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
                                        variable="FLUXSCORE_ANNOTATE_SESSION_SECRET")
        return key

    def require_redis(self) -> str:
        if not self.redis_url:
            raise AnnotateSettingsError("set FLUXSCORE_REDIS_URL (or REDIS_URL): the annotation queue lives in "
                                        "Redis (or run `fluxscore annotate serve --demo`, which starts one)",
                                        variable="FLUXSCORE_REDIS_URL")
        return self.redis_url
