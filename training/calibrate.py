"""Fitting the isotonic calibration of a package, per stage and dimension, on the calibration split.

The calibration split is kept apart from the validation split (which chose the checkpoint), so the maps
learn how the chosen model errs on data it has not been selected on. With few rows an isotonic map can
hurt; each dimension's map is kept only when, cross-validated within the calibration split, it lowers
the MAE there, otherwise that dimension stays uncalibrated (identity, clamped). The test split is only
ever used to report MAE before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scoring.calibration import Calibration, IsotonicMap, Stage

MIN_ROWS = 10


def mae_per_dim(pred: np.ndarray, target: np.ndarray, dimensions: Sequence[str]) -> dict[str, float]:
    err = np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)).mean(axis=0)
    return {d: float(v) for d, v in zip(dimensions, err, strict=True)}


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, min(k, n))]


def crossfit(pred: np.ndarray, target: np.ndarray, *, k: int = 5, seed: int = 0,
             dims: Sequence[int] | None = None) -> np.ndarray:
    """Out-of-fold isotonic calibration of ``pred`` (n, d): each row calibrated by maps fitted on the
    other folds. Columns not in ``dims`` are returned unchanged (clamped)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    out = np.clip(pred.copy(), 0.0, 10.0)
    cols = range(pred.shape[1]) if dims is None else dims
    if len(pred) < 2:
        return out
    for fold in _folds(len(pred), k, seed):
        rest = np.setdiff1d(np.arange(len(pred)), fold)
        for j in cols:
            out[fold, j] = np.clip(IsotonicMap.fit(pred[rest, j], target[rest, j])(pred[fold, j]), 0.0, 10.0)
    return out


@dataclass
class StageFit:
    stage: Stage
    maps: dict[str, IsotonicMap]
    kept: dict[str, bool]
    calibration_cv_mae: dict[str, dict[str, float]]  # "raw"/"isotonic" -> dim -> MAE (out of fold)
    n_rows: int


def fit_stage(stage: Stage, pred: np.ndarray, target: np.ndarray, dimensions: Sequence[str], *,
              k: int = 5, seed: int = 0, min_gain: float = 0.0) -> StageFit:
    """Isotonic maps for one stage, each kept only when it beats the raw scores out of fold."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.shape[1] != len(dimensions):
        raise ValueError(f"predictions {pred.shape} and targets {target.shape} must both be "
                         f"(n, {len(dimensions)})")
    raw_mae = mae_per_dim(np.clip(pred, 0, 10), target, dimensions)
    if len(pred) < MIN_ROWS:
        return StageFit(stage, {}, dict.fromkeys(dimensions, False), {"raw": raw_mae, "isotonic": raw_mae},
                        len(pred))
    oof = crossfit(pred, target, k=k, seed=seed)
    iso_mae = mae_per_dim(oof, target, dimensions)
    maps: dict[str, IsotonicMap] = {}
    kept: dict[str, bool] = {}
    for j, dim in enumerate(dimensions):
        kept[dim] = iso_mae[dim] < raw_mae[dim] - min_gain
        if kept[dim]:
            maps[dim] = IsotonicMap.fit(pred[:, j], target[:, j])
    return StageFit(stage, maps, kept, {"raw": raw_mae, "isotonic": iso_mae}, len(pred))


@dataclass
class CalibrationReport:
    calibration: Calibration
    fits: dict[str, StageFit]
    test_mae: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # stage -> before/after -> dim

    def summary(self) -> dict[str, Any]:
        return {stage: {"n_calibration": fit.n_rows, "kept": fit.kept,
                        "calibration_cv_mae": fit.calibration_cv_mae,
                        "test_mae": self.test_mae.get(stage, {})} for stage, fit in self.fits.items()}


def fit_calibration(dimensions: Sequence[str], calibration_preds: dict[Stage, np.ndarray],
                    calibration_targets: np.ndarray, *, existing: Calibration | None = None,
                    test_preds: dict[Stage, np.ndarray] | None = None, test_targets: np.ndarray | None = None,
                    meta: dict[str, Any] | None = None, seed: int = 0) -> CalibrationReport:
    """Fit maps for the stages given; stages not given keep their ``existing`` maps."""
    maps: dict[str, dict[str, IsotonicMap]] = dict(existing.maps) if existing else {}
    fits: dict[str, StageFit] = {}
    for stage, pred in calibration_preds.items():
        fit = fit_stage(stage, pred, calibration_targets, dimensions, seed=seed)
        maps[stage] = fit.maps
        fits[stage] = fit
    body_meta = dict(existing.meta) if existing else {}
    body_meta.update(meta or {})
    body_meta["dimensions"] = list(dimensions)
    calibration = Calibration(maps=maps, meta=body_meta)
    report = CalibrationReport(calibration=calibration, fits=fits)
    if test_preds and test_targets is not None:
        for stage, pred in test_preds.items():
            report.test_mae[stage] = {
                "before": mae_per_dim(np.clip(pred, 0, 10), test_targets, dimensions),
                "after": mae_per_dim(calibration.apply(stage, dimensions, pred), test_targets, dimensions)}
    return report
