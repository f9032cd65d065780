"""Process settings of the scoring core, read once from environment variables.

Filter behaviour never lives here: that is data in each filter package. These are properties of the
process running the filters (where to find packages, which device, how large a batch).

| variable | default | meaning |
|---|---|---|
| ``FLUXSCORE_FILTERS_PATH`` | (bundled ``filters/``) | extra package roots, ``os.pathsep``-separated, searched first |
| ``FLUXSCORE_MAX_CONTENT_BYTES`` | ``800000`` | articles whose content is larger (UTF-8 bytes) are rejected |
| ``FLUXSCORE_MAX_RECORD_BYTES`` | ``900000`` | larger records (JSON bytes) are rejected; <= message limit - 64 KiB |
| ``FLUXSCORE_MAX_DEPTH`` | ``32`` | records nested deeper (objects/arrays) are rejected |
| ``FLUXSCORE_MAX_METADATA_BYTES`` | ``64000`` | records whose ``metadata`` + ``tags`` (JSON) are larger are rejected |
| ``FLUXSCORE_DEVICE`` | ``auto`` | ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` |
| ``FLUXSCORE_STAGE1_BATCH`` | ``64`` | articles per embedding/probe forward pass |
| ``FLUXSCORE_STAGE2_BATCH`` | ``16`` | sequences per student forward pass |
| ``FLUXSCORE_TORCH_THREADS`` | (torch default) | intra-op threads for CPU inference |
| ``FLUXSCORE_COMMERCE_PACKAGE`` | (bundled ``filters/commerce/v1``) | commerce detector package directory |
| ``FLUXSCORE_ALLOW_UNVERIFIED_MODELS`` | (unset) | ``1``/``true``: development only — serve packages whose files \
do not match (or lack) the sha256 hashes recorded at export, with a logged warning naming each package |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from scoring.article import (
    DEFAULT_MAX_CONTENT_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    Limits,
)
from scoring.exceptions import FluxscoreError


class SettingsError(FluxscoreError):
    """An environment variable holds a value that cannot be used."""


def _int(env: dict[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise SettingsError(f"{name} must be 1, true, 0 or false, got {env[name]!r}")


def _paths(raw: str | None) -> tuple[Path, ...]:
    if not raw:
        return ()
    return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p)


@dataclass(frozen=True, slots=True)
class ScoringSettings:
    filters_path: tuple[Path, ...] = ()
    max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    device: str = "auto"
    stage1_batch: int = 64
    stage2_batch: int = 16
    torch_threads: int | None = None
    commerce_package: Path | None = None
    # Development override: a refused package is a deliberate stop, so only an explicit opt-in skips it.
    allow_unverified_models: bool = False
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ScoringSettings:
        env = dict(os.environ if env is None else env)
        threads = env.get("FLUXSCORE_TORCH_THREADS")
        commerce = env.get("FLUXSCORE_COMMERCE_PACKAGE")
        return cls(
            filters_path=_paths(env.get("FLUXSCORE_FILTERS_PATH")),
            max_content_bytes=_int(env, "FLUXSCORE_MAX_CONTENT_BYTES", DEFAULT_MAX_CONTENT_BYTES),
            max_record_bytes=_int(env, "FLUXSCORE_MAX_RECORD_BYTES", DEFAULT_MAX_RECORD_BYTES, minimum=1024),
            max_depth=_int(env, "FLUXSCORE_MAX_DEPTH", DEFAULT_MAX_DEPTH, minimum=2),
            max_metadata_bytes=_int(env, "FLUXSCORE_MAX_METADATA_BYTES", DEFAULT_MAX_METADATA_BYTES),
            device=env.get("FLUXSCORE_DEVICE", "auto") or "auto",
            stage1_batch=_int(env, "FLUXSCORE_STAGE1_BATCH", 64),
            stage2_batch=_int(env, "FLUXSCORE_STAGE2_BATCH", 16),
            torch_threads=_int(env, "FLUXSCORE_TORCH_THREADS", 0, minimum=0) or None if threads else None,
            commerce_package=Path(commerce).expanduser() if commerce else None,
            allow_unverified_models=_flag(env, "FLUXSCORE_ALLOW_UNVERIFIED_MODELS"),
        )

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
