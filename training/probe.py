"""Stage-1 probe training, and an on-disk cache of embeddings so re-training does not re-encode.

Default recipe, chosen for the data filters are trained on (a few hundred oracle-labelled articles,
384-d embeddings), where the original recipe (MLP 256-128, dropout 0.2, L1 loss, Adam) has ~130k
weights for ~300 rows and overfits: one hidden layer of 128, AdamW with strong weight decay, Huber loss
(quadratic near the target so it fits the mean, linear far away so noisy oracle labels do not dominate),
early stopping on validation MAE with the best weights restored, outputs clamped to 0-10 at inference.
Everything is configurable through :class:`ProbeRecipe`. On synthetic 300-row tasks the difference to
the original recipe is small (validation MAE ~1% lower, 4-5x faster); measure on real labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from scoring.probe import SCORE_RANGE, Probe, ProbeNet
from training.exceptions import TrainingDataError

ProgressFn = Callable[[int, int, dict[str, float]], None]  # (epoch, max_epochs, metrics)


@dataclass(frozen=True)
class ProbeRecipe:
    hidden: tuple[int, ...] = (128,)
    dropout: float = 0.2
    loss: Literal["huber", "mse", "l1"] = "huber"
    huber_delta: float = 1.0
    lr: float = 5e-4
    weight_decay: float = 0.1
    batch_size: int = 32
    max_epochs: int = 400
    patience: int = 30
    val_fraction: float = 0.15
    seed: int = 0


# The original system's recipe, kept for comparisons and benchmarks.
ORIGINAL_RECIPE = ProbeRecipe(hidden=(256, 128), dropout=0.2, loss="l1", lr=1e-3, weight_decay=0.0)


def _check(embeddings: np.ndarray, targets: np.ndarray, dimensions: Sequence[str],
           weights: np.ndarray | None, what: str) -> None:
    if embeddings.ndim != 2 or targets.ndim != 2:
        raise TrainingDataError(f"{what}: embeddings and targets must be 2-D, got {embeddings.shape} "
                                f"and {targets.shape}", step="probe")
    if embeddings.shape[0] != targets.shape[0]:
        raise TrainingDataError(f"{what}: {embeddings.shape[0]} embeddings but {targets.shape[0]} targets",
                                step="probe")
    if targets.shape[1] != len(dimensions):
        raise TrainingDataError(f"{what}: targets have {targets.shape[1]} columns for {len(dimensions)} "
                                f"dimensions {list(dimensions)}", step="probe")
    if not (np.isfinite(embeddings).all() and np.isfinite(targets).all()):
        raise TrainingDataError(f"{what}: embeddings or targets contain NaN/inf", step="probe")
    if targets.min() < SCORE_RANGE[0] or targets.max() > SCORE_RANGE[1]:
        raise TrainingDataError(f"{what}: targets must lie in 0-10, found "
                                f"{targets.min():.3g}..{targets.max():.3g}", step="probe")
    if weights is not None and (weights.shape != (targets.shape[0],) or (weights < 0).any()
                                or not np.isfinite(weights).all() or weights.sum() <= 0):
        raise TrainingDataError(f"{what}: sample weights must be {targets.shape[0]} non-negative numbers "
                                "with a positive sum", step="probe")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (train, validation) index split; at least one row on each side."""
    if n < 2:
        raise TrainingDataError(f"need at least 2 rows to hold out a validation set, got {n}", step="probe")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _loss_fn(recipe: ProbeRecipe) -> nn.Module:
    if recipe.loss == "huber":
        return nn.HuberLoss(reduction="none", delta=recipe.huber_delta)
    if recipe.loss == "mse":
        return nn.MSELoss(reduction="none")
    if recipe.loss == "l1":
        return nn.L1Loss(reduction="none")
    raise ValueError(f"unknown loss {recipe.loss!r} (huber, mse, l1)")


def train_probe(embeddings: np.ndarray, targets: np.ndarray, dimensions: Sequence[str], embedding_model: str,
                *, recipe: ProbeRecipe | None = None, sample_weights: np.ndarray | None = None,
                val_embeddings: np.ndarray | None = None, val_targets: np.ndarray | None = None,
                progress: ProgressFn | None = None, **overrides: Any) -> tuple[Probe, dict[str, Any]]:
    """Fit a probe; returns it and a history (per-epoch train loss, validation loss and MAE).

    Without ``val_embeddings``/``val_targets`` a seeded ``recipe.val_fraction`` of the rows is held
    out. Keyword ``overrides`` replace recipe fields (``hidden=(128,)``, ``lr=...``).
    """
    recipe = recipe or ProbeRecipe()
    if overrides:
        unknown = set(overrides) - set(ProbeRecipe.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown probe recipe fields: {sorted(unknown)}")
        recipe = ProbeRecipe(**{**asdict(recipe), **overrides})
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float32)
    w = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float32)
    _check(x, y, dimensions, w, "training data")
    if (val_embeddings is None) != (val_targets is None):
        raise TrainingDataError("give both val_embeddings and val_targets, or neither", step="probe")
    if val_embeddings is not None and val_targets is not None:
        xv = np.asarray(val_embeddings, dtype=np.float32)
        yv = np.asarray(val_targets, dtype=np.float32)
        _check(xv, yv, dimensions, None, "validation data")
        if xv.shape[1] != x.shape[1]:
            raise TrainingDataError("validation embeddings differ in width from training ones", step="probe")
        xt, yt, wt = x, y, w
    else:
        tr, va = split_indices(len(x), recipe.val_fraction, recipe.seed)
        xt, yt, xv, yv = x[tr], y[tr], x[va], y[va]
        wt = None if w is None else w[tr]
    if wt is None:
        wt = np.ones(len(xt), dtype=np.float32)

    started = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = ProbeNet(x.shape[1], recipe.hidden, len(dimensions), recipe.dropout)
        mean = xt.mean(axis=0)
        # A floor on the scale: constant embedding coordinates would otherwise divide by zero.
        std = np.maximum(xt.std(axis=0), 1e-6)
        net.input_mean.copy_(torch.from_numpy(mean))
        net.input_std.copy_(torch.from_numpy(std))
        # Start the output layer at the mean score, so early epochs fit structure, not the offset.
        last = net.layers[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.bias.copy_(torch.from_numpy(np.average(yt, axis=0, weights=wt)))
        history = _fit(net, recipe, xt, yt, wt, xv, yv, progress)
    net.eval()
    val_pred = net(torch.from_numpy(xv)).detach().numpy()
    per_dim = np.abs(val_pred - yv).mean(axis=0)
    history.update({
        "recipe": {**asdict(recipe), "hidden": list(recipe.hidden)},
        "n_train": len(xt), "n_val": len(xv), "dimensions": list(dimensions),
        "val_mae_per_dim": {d: float(v) for d, v in zip(dimensions, per_dim, strict=True)},
        "seconds": round(time.monotonic() - started, 3),
    })
    training_info = {k: history[k] for k in ("recipe", "n_train", "n_val", "best_epoch", "best_val_mae",
                                             "val_mae_per_dim", "epochs_run")}
    probe = Probe(net, dimensions=list(dimensions), embedding_model=embedding_model, input_dim=x.shape[1],
                  hidden=recipe.hidden, dropout=recipe.dropout, training=training_info)
    return probe, history


def _fit(net: ProbeNet, recipe: ProbeRecipe, xt: np.ndarray, yt: np.ndarray, wt: np.ndarray,
         xv: np.ndarray, yv: np.ndarray, progress: ProgressFn | None) -> dict[str, Any]:
    loss_fn = _loss_fn(recipe)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    xt_t, yt_t, wt_t = torch.from_numpy(xt), torch.from_numpy(yt), torch.from_numpy(wt)
    xv_t, yv_t = torch.from_numpy(xv), torch.from_numpy(yv)
    generator = torch.Generator().manual_seed(recipe.seed)
    train_loss: list[float] = []
    val_loss: list[float] = []
    val_mae: list[float] = []
    best = (float("inf"), 0)
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    for epoch in range(1, recipe.max_epochs + 1):
        net.train()
        order = torch.randperm(len(xt_t), generator=generator)
        total, weight_sum = 0.0, 0.0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            per_row = loss_fn(net(xt_t[idx], clamp=False), yt_t[idx]).mean(dim=1)
            wb = wt_t[idx]
            if float(wb.sum()) <= 0:
                continue
            loss = (per_row * wb).sum() / wb.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float((per_row.detach() * wb).sum())
            weight_sum += float(wb.sum())
        net.eval()
        with torch.no_grad():
            raw = net(xv_t, clamp=False)
            v_loss = float(loss_fn(raw, yv_t).mean())
            v_mae = float((net(xv_t) - yv_t).abs().mean())
        train_loss.append(total / max(weight_sum, 1e-12))
        val_loss.append(v_loss)
        val_mae.append(v_mae)
        if progress is not None:
            progress(epoch, recipe.max_epochs, {"train_loss": train_loss[-1], "val_loss": v_loss,
                                                "val_mae": v_mae})
        if v_mae < best[0] - 1e-6:
            best = (v_mae, epoch)
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        elif epoch - best[1] >= recipe.patience:
            break
    net.load_state_dict(best_state)
    return {"train_loss": train_loss, "val_loss": val_loss, "val_mae": val_mae, "best_epoch": best[1],
            "best_val_mae": best[0], "epochs_run": len(train_loss)}
