"""Calibration fitting: out-of-fold evaluation decides which maps are kept."""

from __future__ import annotations

import numpy as np

from scoring.calibration import Calibration, IsotonicMap
from training.calibrate import crossfit, fit_calibration, fit_stage, mae_per_dim

DIMS = ["a", "b"]


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 10, size=(n, 2))
    # Dimension a: squashed towards 5 (a calibration map fixes it); b: right on average, only noise.
    pred = np.column_stack([5 + 0.4 * (target[:, 0] - 5), target[:, 1]]) + rng.normal(0, 0.5, size=(n, 2))
    return pred, target


def test_crossfit_is_out_of_fold() -> None:
    pred, target = _data(200)
    oof = crossfit(pred, target, k=5, seed=1)
    in_sample = IsotonicMap.fit(pred[:, 0], target[:, 0])(pred[:, 0])
    # In-sample isotonic fits its own noise; out of fold it cannot, so it is never better.
    assert np.abs(oof[:, 0] - target[:, 0]).mean() >= np.abs(in_sample - target[:, 0]).mean()
    untouched = crossfit(pred, target, dims=[0])
    np.testing.assert_allclose(untouched[:, 1], np.clip(pred[:, 1], 0, 10))


def test_fit_stage_keeps_only_helpful_maps() -> None:
    pred, target = _data(300)
    fit = fit_stage("stage1", pred, target, DIMS)
    assert fit.kept == {"a": True, "b": False}
    assert set(fit.maps) == {"a"}
    assert fit.calibration_cv_mae["isotonic"]["a"] < fit.calibration_cv_mae["raw"]["a"]


def test_too_few_rows_keep_identity() -> None:
    pred, target = _data(6)
    fit = fit_stage("stage1", pred, target, DIMS)
    assert fit.maps == {} and not any(fit.kept.values())


def test_fit_calibration_reports_test_mae_and_keeps_other_stage() -> None:
    pred, target = _data(300, seed=1)
    test_pred, test_target = _data(300, seed=2)
    existing = Calibration(maps={"stage2": {"b": IsotonicMap((0.0, 10.0), (1.0, 9.0))}}, meta={"note": "old"})
    report = fit_calibration(DIMS, {"stage1": pred}, target, existing=existing, test_preds={"stage1": test_pred},
                             test_targets=test_target, meta={"fitted_on": {"split": "calibration"}})
    cal = report.calibration
    assert set(cal.maps) == {"stage1", "stage2"}
    assert cal.maps["stage2"] == existing.maps["stage2"]
    assert cal.meta["note"] == "old" and cal.meta["fitted_on"]["split"] == "calibration"
    mae = report.test_mae["stage1"]
    assert mae["after"]["a"] < mae["before"]["a"] - 0.3
    if not report.fits["stage1"].kept["b"]:
        assert mae["after"]["b"] == mae["before"]["b"]
    assert abs(mae["after"]["b"] - mae["before"]["b"]) < 0.05
    # The saved file round-trips.
    assert Calibration.from_json(cal.to_json()).maps == cal.maps
    assert mae_per_dim(test_target, test_target, DIMS) == {"a": 0.0, "b": 0.0}
