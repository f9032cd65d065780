"""Process settings of the scoring core, read once from environment variables.

Filter behaviour never lives here: that is data in each filter package. These are properties of the
process running the filters (where to find packages, which device, how large a batch).

| variable | default | meaning |
|---|---|---|
| ``FLUXSCORE_FILTERS_PATH`` | (bundled ``filters/``) | extra package roots, ``os.pathsep``-separated, searched first |
| ``FLUXSCORE_MAX_CONTENT_BYTES`` | ``1000000`` | articles whose content is larger (UTF-8 bytes) are rejected |
| ``FLUXSCORE_DEVICE`` | ``auto`` | ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` |
| ``FLUXSCORE_STAGE1_BATCH`` | ``64`` | articles per embedding/probe forward pass |
| ``FLUXSCORE_STAGE2_BATCH`` | ``16`` | sequences per student forward pass |
| ``FLUXSCORE_TORCH_THREADS`` | (torch default) | intra-op threads for CPU inference |
| ``FLUXSCORE_COMMERCE_PACKAGE`` | (bundled ``filters/commerce/v1``) | commerce detector package directory |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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


def _paths(raw: str | None) -> tuple[Path, ...]:
    if not raw:
        return ()
    return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p)


@dataclass(frozen=True, slots=True)
class ScoringSettings:
    filters_path: tuple[Path, ...] = ()
    max_content_bytes: int = 1_000_000
    device: str = "auto"
    stage1_batch: int = 64
    stage2_batch: int = 16
    torch_threads: int | None = None
    commerce_package: Path | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ScoringSettings:
        env = dict(os.environ if env is None else env)
        threads = env.get("FLUXSCORE_TORCH_THREADS")
        commerce = env.get("FLUXSCORE_COMMERCE_PACKAGE")
        return cls(
            filters_path=_paths(env.get("FLUXSCORE_FILTERS_PATH")),
            max_content_bytes=_int(env, "FLUXSCORE_MAX_CONTENT_BYTES", 1_000_000),
            device=env.get("FLUXSCORE_DEVICE", "auto") or "auto",
            stage1_batch=_int(env, "FLUXSCORE_STAGE1_BATCH", 64),
            stage2_batch=_int(env, "FLUXSCORE_STAGE2_BATCH", 16),
            torch_threads=_int(env, "FLUXSCORE_TORCH_THREADS", 0, minimum=0) or None if threads else None,
            commerce_package=Path(commerce).expanduser() if commerce else None,
        )


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
