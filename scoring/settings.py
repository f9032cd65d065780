"""Process settings, read once from environment variables into frozen objects.

Filter behaviour never lives here: that is data in each filter package. Settings are properties of
the process running the filters (where to find packages, which device, how large a batch, which
broker). Every part of fluxscore declares its own class on :class:`FluxscoreSettings` (pydantic-settings):
:class:`ScoringSettings` here, ``StreamSettings`` and ``EmbeddedSettings`` in ``streams.settings``,
``TrainingSettings`` and ``OracleSettings`` in ``training``. Each field's description is its
documentation: the README's variable table is generated from these classes (and a test checks it).

>>> ScoringSettings.from_env({"FLUXSCORE_STAGE1_BATCH": "32"}).stage1_batch
32
>>> ScoringSettings.from_env({"FLUXSCORE_STAGE1_BATCH": "many"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
scoring.exceptions.SettingsError: FLUXSCORE_STAGE1_BATCH: Input should be a valid integer, ... (got 'many') ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from scoring.article import (
    DEFAULT_MAX_CONTENT_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    Limits,
)
from scoring.exceptions import SettingsError

__all__ = ["FluxscoreSettings", "ScoringSettings", "SettingsError", "env_name", "resolve_device",
           "settings_table"]

# The environment a ``from_env(mapping)`` call reads instead of os.environ (tests, subprocess set-up).
_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("fluxscore_settings_env", default=None)


class _EnvSource(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENV.get()
        if env is None:
            return super()._load_env_vars()
        return parse_env_vars(env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class FluxscoreSettings(BaseSettings):
    """Base of every settings class: ``FLUXSCORE_`` variables, frozen, errors as :class:`SettingsError`."""

    model_config = SettingsConfigDict(env_prefix="FLUXSCORE_", frozen=True, extra="ignore", env_ignore_empty=True,
                                      case_sensitive=False, validate_default=True, populate_by_name=True)
    # Shown in the generated variable table above this class's rows.
    doc_title: ClassVar[str] = ""
    # A subsystem may raise its own subclass (it is still a SettingsError).
    error: ClassVar[type[SettingsError]] = SettingsError
    registry: ClassVar[list[type[FluxscoreSettings]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__ != "FluxscoreSettings" and not cls.__name__.startswith("_"):
            FluxscoreSettings.registry.append(cls)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvSource(settings_cls)

    def __init__(self, **values: Any) -> None:
        # Direct construction (tests, command-line overrides) reports bad values as the environment does.
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _settings_error(type(self), exc) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Read the process environment (or ``env`` alone, when given) once; bad values name their variable.

        ``overrides`` (e.g. command-line options) win over the environment; ``None`` ones are ignored.
        """
        token = _ENV.set(dict(env) if env is not None else None)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            _ENV.reset(token)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated like the environment's values."""
        with _no_env():
            return type(self)(**{**self.model_dump(), **changes})


@contextmanager
def _no_env() -> Iterator[None]:
    token = _ENV.set({})
    try:
        yield
    finally:
        _ENV.reset(token)


def env_name(cls: type[FluxscoreSettings], field: str) -> str:
    """The environment variable that sets ``field`` (its first alias, else ``FLUXSCORE_<FIELD>``)."""
    info = cls.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return first if isinstance(first, str) else str(first)
    if isinstance(alias, str):
        return alias
    return str(cls.model_config.get("env_prefix", "")) + field.upper()


def _settings_error(cls: type[FluxscoreSettings], exc: ValidationError) -> SettingsError:
    problems = []
    variable = None
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = env_name(cls, field) if field in cls.model_fields else field or cls.__name__
        variable = variable or name
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        info = cls.model_fields.get(field)
        secret = info is not None and "SecretStr" in repr(info.annotation)
        # A secret's rejected value is never repeated back (it would land in logs and terminals).
        got = f" (got {given!r})" if isinstance(given, str | int | float) and repr(given) not in message \
            and not secret else ""
        problems.append(f"{name}: {message}{got}")
    return cls.error("; ".join(problems), variable=variable)


def _default_text(info: FieldInfo) -> str:
    shown = (info.json_schema_extra or {}).get("default_doc") if isinstance(info.json_schema_extra, dict) else None
    if shown is not None:
        return str(shown)
    default = info.get_default(call_default_factory=True)
    if default is None or default == () or default == "":
        return "(unset)"
    if isinstance(default, SecretStr):
        return "(unset)"
    if isinstance(default, tuple | list):
        default = ",".join(map(str, default))
    if isinstance(default, bool):
        default = "1" if default else "0"
    return f"`{default}`"


def settings_table(classes: list[type[FluxscoreSettings]] | None = None) -> str:
    """The markdown table of every variable of ``classes`` (default: every class defined so far)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for cls in classes or FluxscoreSettings.registry:
        lines.append(f"| **{cls.doc_title or cls.__name__}** | | |")
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if info.exclude or extra.get("documented_by"):
                continue  # a variable another class documents (one row per variable)
            variables = env_name(cls, name)
            alias = info.validation_alias
            if isinstance(alias, AliasChoices) and len(alias.choices) > 1:
                variables += " (or " + ", ".join(f"`{c}`" for c in alias.choices[1:]) + ")"
                variables = variables.replace(env_name(cls, name), f"`{env_name(cls, name)}`", 1)
            else:
                variables = f"`{variables}`"
            meaning = (info.description or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {variables} | {_default_text(info)} | {meaning} |")
    return "\n".join(lines) + "\n"


# Every module that defines settings classes, in the order the README lists them. Named, not imported:
# the scoring core imports nothing above it; the documentation step imports them when it runs.
SETTINGS_MODULES = ("scoring.settings", "scoring.gguf", "streams.settings", "streams.annotate.settings",
                    "training.settings", "training.oracle", "training.labels")
README_BEGIN = "<!-- settings table: generated by `make settings-doc` from the settings classes -->"
README_END = "<!-- end of settings table -->"


def documented_table() -> str:
    """The variable table of every settings class of every part of fluxscore."""
    import importlib

    for name in SETTINGS_MODULES:
        importlib.import_module(name)

    def rank(cls: type[FluxscoreSettings]) -> int:
        return next(i for i, name in enumerate(SETTINGS_MODULES) if cls.__module__.startswith(name))

    # In the modules' order whatever order they were imported in; classes defined elsewhere (tests) left out.
    ours = [c for c in FluxscoreSettings.registry if any(c.__module__.startswith(n) for n in SETTINGS_MODULES)]
    return settings_table(sorted(ours, key=rank))


def write_readme_table(readme: Path) -> bool:
    """Replace the README's generated table with the current one; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    head, _, rest = text.partition(README_BEGIN)
    _, _, tail = rest.partition(README_END)
    new = f"{head}{README_BEGIN}\n{documented_table()}{README_END}{tail}"
    readme.write_text(new, encoding="utf-8")
    return new != text


def _split_paths(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(Path(p).expanduser() for p in value.split(os.pathsep) if p)
    return value


def _flag(value: Any) -> Any:
    # "1/true/yes/on" and "0/false/no/off"; anything else is refused rather than read as false.
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"must be 1, true, 0 or false, got {value!r}")
    return value


Flag = Annotated[bool, NoDecode]


class ScoringSettings(FluxscoreSettings):
    """Settings of the scoring core: every command and worker reads them."""

    doc_title: ClassVar[str] = "scoring (every command and worker)"

    filters_path: Annotated[tuple[Path, ...], NoDecode] = Field(
        (), description="extra package roots (`:`-separated), searched before the bundled `filters/`")
    max_content_bytes: int = Field(DEFAULT_MAX_CONTENT_BYTES, ge=1,
                                   description="articles with larger content (UTF-8 bytes) are rejected")
    max_record_bytes: int = Field(DEFAULT_MAX_RECORD_BYTES, ge=1024, description=(
        "records larger than this (JSON bytes as published) are rejected; a stream worker refuses to start "
        "unless it is at most `FLUXSCORE_MAX_MESSAGE_BYTES` less 64 KiB for what each hop adds"))
    max_depth: int = Field(DEFAULT_MAX_DEPTH, ge=2,
                           description="records nested deeper (objects in arrays in objects…) are rejected")
    max_metadata_bytes: int = Field(DEFAULT_MAX_METADATA_BYTES, ge=1, description=(
        "records whose `metadata` and `tags` together (compact JSON) are larger are rejected"))
    device: str = Field("auto", description="`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`")
    stage1_batch: int = Field(64, ge=1, description="articles per embedding/probe forward pass")
    stage2_batch: int = Field(16, ge=1, description="sequences per student forward pass")
    torch_threads: int | None = Field(None, ge=1, description="CPU intra-op threads (unset or 0: torch's default)")
    commerce_package: Path | None = Field(None, description="commerce detector package directory "
                                                            "(default: the bundled `filters/commerce/v1`)")
    allow_unverified_models: Flag = Field(False, description=(
        "`1`: development only — serve packages whose files do not match (or lack) the sha256 hashes "
        "recorded at export, with a logged warning naming each package"))
    offline: Flag = Field(False, validation_alias=AliasChoices("FLUXSCORE_OFFLINE", "HF_HUB_OFFLINE"), description=(
        "`1`: never download a model; hub ids must be in the local cache (set by the Makefile and the image)"))
    log_level: str = Field("WARNING", description="log level of the commands (workers: see below)")

    @field_validator("filters_path", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _split_paths(value)

    @field_validator("allow_unverified_models", "offline", mode="before")
    @classmethod
    def _flags(cls, value: Any) -> Any:
        return _flag(value)

    @field_validator("torch_threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        return None if value in ("0", 0) else value

    @field_validator("commerce_package", mode="before")
    @classmethod
    def _user_path(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, str) else value

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto" and value != "cpu" and not value.startswith("cuda"):
            raise ValueError(f"must be auto, cpu or cuda[:N], got {value!r}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def limits(self) -> Limits:
        """The bounds :func:`scoring.article.parse_article` enforces on every record."""
        return Limits(max_content_bytes=self.max_content_bytes, max_record_bytes=self.max_record_bytes,
                      max_depth=self.max_depth, max_metadata_bytes=self.max_metadata_bytes)


def resolve_device(spec: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is present; validate explicit choices early."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"FLUXSCORE_DEVICE={spec} but no CUDA device is available")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise SettingsError(f"FLUXSCORE_DEVICE must be auto, cpu or cuda[:N], got {spec!r}")
    return spec
