"""Reports: markdown with tables and real PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoring.calibration import IsotonicMap
from training.report import Report, calibration_curves, loss_curves, predicted_vs_oracle, threshold_sweep
from training.threshold import choose

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_writes_markdown_and_every_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 10, size=(50, 2))
    pred = target + rng.normal(0, 1, size=(50, 2))
    choice = choose(pred.mean(axis=1), target.mean(axis=1) >= 4)
    report = Report(tmp_path / "reports", "probe", "probe — x@1")
    report.text("Some words.").heading("Numbers").table(["dim", "MAE"], [["a", 0.5], ["b", float("nan")]])
    report.figure("loss", loss_curves({"train_loss": [3, 2, 1], "val_loss": [3, 2.5, 2.6], "val_mae": [2, 1.5, 1.6],
                                       "best_epoch": 2}))
    report.figure("pred", predicted_vs_oracle(pred, target, ["a", "b"], "validation"))
    report.figure("cal", calibration_curves(pred, target, ["a", "b"], {"a": IsotonicMap.fit(pred[:, 0], target[:, 0])}))
    report.figure("sweep", threshold_sweep(choice.sweep, choice.threshold, 0.02))
    path = report.write()
    text = path.read_text()
    assert text.startswith("# probe — x@1")
    assert "| a | 0.500 |" in text and "| b | – |" in text
    for slug in ("loss", "pred", "cal", "sweep"):
        png = tmp_path / "reports" / f"probe-{slug}.png"
        assert f"(probe-{slug}.png)" in text
        assert png.read_bytes().startswith(PNG) and png.stat().st_size > 2000
