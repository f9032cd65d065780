"""From calibrated dimension scores to one number and a tier: weights, gatekeepers, normalisation."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scoring.exceptions import PackageError
from scoring.package import FilterConfig


class Tier(StrEnum):
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


@dataclass(frozen=True)
class Aggregate:
    weighted_average: float
    tier: Tier
    gatekeeper_applied: bool
    gatekeeper_dimension: str | None
    uncapped_average: float


def weighted_averages(config: FilterConfig, scores: np.ndarray) -> np.ndarray:
    """(batch, n_dims) -> (batch,) weighted averages, before gatekeepers."""
    return np.asarray(scores, dtype=np.float64) @ np.asarray(config.weights, dtype=np.float64)


def tier_of(config: FilterConfig, value: float) -> Tier:
    if value >= config.tiers.high:
        return Tier.HIGH
    if value >= config.tiers.medium:
        return Tier.MEDIUM
    return Tier.LOW


def aggregate(config: FilterConfig, scores: dict[str, float] | list[float] | np.ndarray) -> Aggregate:
    """Weighted average, the strictest applicable gatekeeper cap, and the tier of one article."""
    names = config.dimension_names
    values = [float(scores[n]) for n in names] if isinstance(scores, dict) else [float(v) for v in scores]
    if len(values) != len(names):
        raise ValueError(f"{config.name}: expected {len(names)} scores, got {len(values)}")
    uncapped = float(np.dot(values, config.weights))
    capped, gate_dim = uncapped, None
    by_name = dict(zip(names, values, strict=True))
    for gate in config.gatekeepers:
        if by_name[gate.dimension] < gate.minimum and gate.cap < capped:
            capped, gate_dim = gate.cap, gate.dimension
    capped = round(min(max(capped, 0.0), 10.0), 4)
    return Aggregate(weighted_average=capped, tier=tier_of(config, capped), gatekeeper_applied=gate_dim is not None,
                     gatekeeper_dimension=gate_dim, uncapped_average=round(uncapped, 4))


@dataclass(frozen=True)
class PercentileNormalizer:
    """Maps a weighted average to its percentile (0-100) in a reference distribution of the filter.

    Useful when downstream consumers rank across filters whose raw scales differ.
    """

    reference: tuple[float, ...]
    method: str = "percentile"

    def __call__(self, value: float) -> float:
        if not self.reference:
            return 0.0
        rank = bisect.bisect_right(self.reference, value)
        return round(100.0 * rank / len(self.reference), 2)

    @classmethod
    def load(cls, path: Path) -> PercentileNormalizer:
        try:
            body: dict[str, Any] = orjson.loads(path.read_bytes())
            method = body.get("method", "percentile")
            if method != "percentile":
                raise ValueError(f"unsupported normalisation method {method!r}")
            return cls(reference=tuple(sorted(float(v) for v in body["reference"])), method=method)
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"normalisation file {path} is invalid: {exc}", path=str(path)) from None

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps({"method": self.method, "reference": list(self.reference)}))
