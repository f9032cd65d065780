"""Training reports: one markdown file per command with PNG plots beside it.

Plots: loss curves, predicted against oracle per dimension, calibration curves, the threshold sweep.
matplotlib runs on the Agg backend, so reports are written the same on a headless machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from scoring.calibration import IsotonicMap


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


class Report:
    """Collects sections, tables and figures; :meth:`write` saves ``<name>.md`` and the PNGs."""

    def __init__(self, directory: Path, name: str, title: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self.parts: list[str] = [f"# {title}\n"]
        self._figures: list[tuple[str, Figure]] = []

    def text(self, body: str) -> Report:
        self.parts.append(body.rstrip() + "\n")
        return self

    def heading(self, title: str) -> Report:
        self.parts.append(f"## {title}\n")
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        self.parts.append("\n".join(lines) + "\n")
        return self

    def kv(self, items: Mapping[str, Any]) -> Report:
        return self.table(["", "value"], [[k, v] for k, v in items.items()])

    def figure(self, slug: str, fig: Figure, caption: str = "") -> Report:
        filename = f"{self.name}-{slug}.png"
        self._figures.append((filename, fig))
        self.parts.append(f"![{caption or slug}]({filename})\n")
        return self

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        for filename, fig in self._figures:
            fig.savefig(self.directory / filename, dpi=90, bbox_inches="tight")
            plt.close(fig)
        self._figures.clear()
        path = self.directory / f"{self.name}.md"
        path.write_text("\n".join(self.parts), encoding="utf-8")
        return path


def _grid(n: int) -> tuple[Figure, list[Any]]:
    cols = min(3, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def loss_curves(history: Mapping[str, Any], title: str = "training") -> Figure:
    """Train/validation loss (and validation MAE when present) per epoch; the best epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        values = history.get(key) or []
        if values:
            ax.plot(range(1, len(values) + 1), values, style, label=key.replace("_", " "))
    mae = history.get("val_mae") or []
    if mae:
        ax2 = ax.twinx()
        ax2.plot(range(1, len(mae) + 1), mae, ":", color="tab:green", label="val MAE")
        ax2.set_ylabel("validation MAE")
        ax2.legend(loc="upper center", fontsize=8)
    best = history.get("best_epoch")
    if best:
        ax.axvline(float(best), color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def predicted_vs_oracle(pred: np.ndarray, target: np.ndarray, dimensions: Sequence[str],
                        title: str = "") -> Figure:
    fig, axes = _grid(len(dimensions))
    rng = np.random.default_rng(0)
    for j, (ax, dim) in enumerate(zip(axes, dimensions, strict=True)):
        # Oracle scores are integers: a little jitter shows how many points sit on each value.
        jitter = rng.uniform(-0.15, 0.15, size=len(target))
        ax.scatter(target[:, j] + jitter, pred[:, j], s=6, alpha=0.5)
        ax.plot([0, 10], [0, 10], color="grey", lw=0.8)
        mae = float(np.abs(pred[:, j] - target[:, j]).mean()) if len(target) else float("nan")
        ax.set_title(f"{dim}\nMAE {mae:.2f}", fontsize=9)
        ax.set_xlim(-0.5, 10.5)
        ax.set_ylim(-0.5, 10.5)
        ax.set_xlabel("oracle", fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def calibration_curves(raw: np.ndarray, target: np.ndarray, dimensions: Sequence[str],
                       maps: Mapping[str, IsotonicMap], title: str = "") -> Figure:
    """Binned mean oracle score against raw prediction, with the fitted isotonic map over it."""
    fig, axes = _grid(len(dimensions))
    grid = np.linspace(0, 10, 101)
    for j, (ax, dim) in enumerate(zip(axes, dimensions, strict=True)):
        x, y = raw[:, j], target[:, j]
        edges = np.linspace(0, 10, 11)
        which = np.clip(np.digitize(x, edges) - 1, 0, 9)
        centres = [(x[which == b].mean(), y[which == b].mean()) for b in range(10) if (which == b).sum() >= 3]
        if centres:
            cx, cy = zip(*centres, strict=True)
            ax.plot(cx, cy, "o", label="binned oracle mean")
        fn = maps.get(dim)
        if fn is not None:
            ax.plot(grid, fn(grid), "-", label="isotonic map")
        ax.plot([0, 10], [0, 10], color="grey", lw=0.8)
        ax.set_title(dim + ("" if fn is not None else " (identity)"), fontsize=9)
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 10)
        ax.set_xlabel("raw prediction", fontsize=8)
        ax.set_ylabel("oracle", fontsize=8)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def threshold_sweep(points: Sequence[Any], chosen: float, target: float, title: str = "") -> Figure:
    """Skip rate and false-negative rates against the threshold, the target and the choice marked."""
    t = np.asarray([p.threshold for p in points])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(t, [p.skip_rate for p in points], label="skip rate")
    ax.plot(t, [p.fn_rate for p in points], label="false-negative rate (observed)")
    ax.plot(t, [p.fn_rate_smoothed for p in points], "--", label="false-negative rate (smoothed)")
    ax.plot(t, [p.fn_rate_wilson for p in points], ":", label="Wilson 95% upper bound")
    ax.axhline(target, color="red", lw=0.8, label=f"target {target:.0%}")
    ax.axvline(chosen, color="black", lw=0.8, label=f"chosen {chosen:.2f}")
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 1)
    ax.set_xlabel("escalation threshold (stage-1 weighted average)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return fig
