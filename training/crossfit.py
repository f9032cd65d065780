"""Cross-fitted probes: K members, each trained without one fold, merged into one probe.

On the few hundred labelled articles a filter starts with, holding out a calibration split costs the
probe a fifth of its training data, and leaves calibration and the escalation threshold a few dozen
rows to learn from. Cross-fitting avoids both: every row of the pool gets a prediction from a member
that never trained on it (the out-of-fold predictions that calibration and the threshold use), and all
rows train the final model, the average of the members. An average of MLPs is itself one MLP (hidden
units side by side, output weights divided by K), so the package still holds one ordinary probe and the
serving code does not know the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from scoring.probe import Probe, ProbeNet

ProgressFn = Callable[[int, int, dict[str, float]], None]


def _linears(net: ProbeNet) -> list[nn.Linear]:
    return [m for m in net.layers if isinstance(m, nn.Linear)]


def merge_probes(members: Sequence[Probe], *, training: dict[str, Any] | None = None) -> Probe:
    """One probe whose output equals the mean of ``members``' outputs (before the 0-10 clamp)."""
    if not members:
        raise ValueError("no probes to merge")
    first = members[0]
    if any(m.dimensions != first.dimensions or m.input_dim != first.input_dim or m.hidden != first.hidden
           for m in members):
        raise ValueError("probes to merge must share dimensions, input width and hidden sizes")
    k = len(members)
    mean = torch.stack([m.net.input_mean for m in members]).mean(dim=0)
    std = torch.stack([m.net.input_std for m in members]).mean(dim=0)
    merged = ProbeNet(first.input_dim, [h * k for h in first.hidden], len(first.dimensions), first.dropout)
    layers = [_linears(m.net) for m in members]
    out_layers = _linears(merged)
    with torch.no_grad():
        merged.input_mean.copy_(mean)
        merged.input_std.copy_(std)
        # First layer: re-express each member's standardisation in the shared one.
        # W((x-μm)/σm) + b = (W·diag(σ/σm))((x-μ)/σ) + b + W((μ-μm)/σm)
        weights, biases = [], []
        for m, lin in zip(members, (ls[0] for ls in layers), strict=True):
            scale = std / m.net.input_std
            shift = (mean - m.net.input_mean) / m.net.input_std
            weights.append(lin.weight * scale)
            biases.append(lin.bias + lin.weight @ shift)
        if len(out_layers) == 1:  # no hidden layer: the output is linear, average it
            out_layers[0].weight.copy_(torch.stack(weights).mean(dim=0))
            out_layers[0].bias.copy_(torch.stack(biases).mean(dim=0))
            return _wrap(merged, first, training)
        out_layers[0].weight.copy_(torch.cat(weights))
        out_layers[0].bias.copy_(torch.cat(biases))
        # Hidden-to-hidden layers: block-diagonal, so members stay independent.
        for depth in range(1, len(out_layers) - 1):
            out_layers[depth].weight.copy_(torch.block_diag(*[ls[depth].weight for ls in layers]))
            out_layers[depth].bias.copy_(torch.cat([ls[depth].bias for ls in layers]))
        out_layers[-1].weight.copy_(torch.cat([ls[-1].weight for ls in layers], dim=1) / k)
        out_layers[-1].bias.copy_(torch.stack([ls[-1].bias for ls in layers]).mean(dim=0))
    return _wrap(merged, first, training)


def _wrap(net: ProbeNet, like: Probe, training: dict[str, Any] | None) -> Probe:
    return Probe(net, dimensions=like.dimensions, embedding_model=like.embedding_model, input_dim=like.input_dim,
                 hidden=net_hidden(net), dropout=like.dropout, training=training)


def net_hidden(net: ProbeNet) -> list[int]:
    return [lin.out_features for lin in _linears(net)[:-1]]


def fold_of(n: int, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold per row; rows of one group (near-duplicates) share a fold."""
    keys = np.arange(n) if groups is None else np.asarray(groups)
    unique = np.unique(keys)
    order = np.random.default_rng(seed).permutation(len(unique))
    assign = {int(unique[i]): j % folds for j, i in enumerate(order)}
    return np.asarray([assign[int(g)] for g in keys], dtype=np.int64)


def crossfit_probe(embeddings: np.ndarray, targets: np.ndarray, dimensions: Sequence[str], embedding_model: str,
                   *, folds: int = 5, seed: int = 0, groups: np.ndarray | None = None,
                   val_embeddings: np.ndarray | None = None, val_targets: np.ndarray | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   **recipe: Any) -> tuple[Probe, np.ndarray, list[dict[str, Any]]]:
    """(merged probe, out-of-fold predictions (n, n_dims), member histories).

    Each member stops early on ``val_*`` when given (one validation split for all), otherwise on the
    fold it leaves out."""
    from training.probe import train_probe

    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float64)
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    fold = fold_of(len(x), folds, seed, groups)
    oof = np.zeros((len(x), len(dimensions)), dtype=np.float64)
    members: list[Probe] = []
    histories: list[dict[str, Any]] = []
    for j in range(folds):
        out = fold == j
        vx, vy = (val_embeddings, val_targets) if val_embeddings is not None else (x[out], y[out])
        probe, history = train_probe(x[~out], y[~out], dimensions, embedding_model, val_embeddings=vx,
                                     val_targets=vy, seed=seed + j, **recipe)
        oof[out] = probe.predict(x[out])
        members.append(probe)
        histories.append(history)
        if progress is not None:
            progress(j + 1, folds)
    info: dict[str, Any] = {"crossfit": {"folds": folds, "seed": seed, "n_rows": len(x),
                                         "member_best_val_mae": [h["best_val_mae"] for h in histories],
                                         "oof_mae": float(np.abs(np.clip(oof, 0, 10) - y).mean())},
                            "recipe": histories[0].get("recipe")}
    return merge_probes(members, training=info), oof, histories
