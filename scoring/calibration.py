"""Per-dimension isotonic calibration, stored as JSON breakpoints and applied by interpolation.

Fitting uses scikit-learn's IsotonicRegression; serving needs only the breakpoints, so a package
carries no pickles and applying a map is a numpy ``interp`` per dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from scoring.exceptions import PackageError

Stage = Literal["stage1", "stage2"]
SCORE_MIN, SCORE_MAX = 0.0, 10.0


@dataclass(frozen=True)
class IsotonicMap:
    """A monotone non-decreasing piecewise-linear map; flat beyond its end points."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.x) < 1:
            raise ValueError("isotonic map needs equal, non-empty x and y")
        if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
            raise ValueError("isotonic map x must be non-decreasing")
        if any(b < a - 1e-9 for a, b in zip(self.y, self.y[1:], strict=False)):
            raise ValueError("isotonic map y must be non-decreasing")

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return np.interp(values, np.asarray(self.x), np.asarray(self.y))

    @classmethod
    def fit(cls, predicted: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> IsotonicMap:
        from sklearn.isotonic import IsotonicRegression

        reg = IsotonicRegression(y_min=SCORE_MIN, y_max=SCORE_MAX, out_of_bounds="clip", increasing=True)
        reg.fit(np.asarray(predicted, dtype=np.float64), np.asarray(target, dtype=np.float64))
        return cls(x=tuple(float(v) for v in reg.X_thresholds_), y=tuple(float(v) for v in reg.y_thresholds_))

    def to_json(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}


@dataclass(frozen=True)
class Calibration:
    """Isotonic maps per stage and dimension; a missing map means identity (then clamped)."""

    maps: dict[str, dict[str, IsotonicMap]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def apply(self, stage: Stage, dimensions: Sequence[str], raw: np.ndarray) -> np.ndarray:
        """Calibrate a (batch, n_dims) array of raw scores; always clamps to 0-10."""
        raw = np.asarray(raw, dtype=np.float64)
        out = raw.copy()
        stage_maps = self.maps.get(stage, {})
        for j, dim in enumerate(dimensions):
            fn = stage_maps.get(dim)
            if fn is not None:
                out[:, j] = fn(raw[:, j])
        return np.clip(out, SCORE_MIN, SCORE_MAX)

    def to_json(self) -> bytes:
        body = {"method": "isotonic", **self.meta,
                "maps": {s: {d: m.to_json() for d, m in dims.items()} for s, dims in self.maps.items()}}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str = "<calibration>") -> Calibration:
        try:
            body = orjson.loads(data)
            maps = {stage: {dim: IsotonicMap(tuple(m["x"]), tuple(m["y"])) for dim, m in dims.items()}
                    for stage, dims in body.get("maps", {}).items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"calibration file {source} is invalid: {exc}", path=source) from None
        unknown = set(maps) - {"stage1", "stage2"}
        if unknown:
            raise PackageError(f"calibration file {source} has unknown stages {sorted(unknown)}", path=source)
        meta = {k: v for k, v in body.items() if k not in {"maps", "method"}}
        return cls(maps=maps, meta=meta)

    @classmethod
    def load(cls, path: Path | None) -> Calibration:
        if path is None:
            return cls()
        return cls.from_json(path.read_bytes(), source=str(path))

    def save(self, path: Path) -> None:
        path.write_bytes(self.to_json())
