"""Cross-fitted probes: the merged probe is exactly the members' average; predictions are out of fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scoring.probe import Probe
from training.crossfit import crossfit_probe, fold_of, merge_probes
from training.probe import train_probe


def _data(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype(np.float32) * rng.uniform(0.5, 3, size=12).astype(np.float32) + 2
    y = np.clip(5 + 1.5 * x[:, :2] - 3, 0, 10)
    return x, y


@pytest.mark.parametrize("hidden", [(8,), (8, 4)])
def test_merge_equals_mean_of_members(hidden: tuple[int, ...], tmp_path: Path) -> None:
    x, y = _data()
    members = [train_probe(x[i::3], y[i::3], ["a", "b"], "m", hidden=hidden, max_epochs=5, seed=i)[0]
               for i in range(3)]
    merged = merge_probes(members)
    xt = torch.from_numpy(x)
    mean = np.mean([m.net(xt, clamp=False).detach().numpy() for m in members], axis=0)
    np.testing.assert_allclose(merged.net(xt, clamp=False).detach().numpy(), mean, atol=1e-4)
    assert merged.hidden == [h * 3 for h in hidden]
    merged.save(tmp_path / "p.safetensors", tmp_path / "p.json")
    again = Probe.load(tmp_path / "p.safetensors", tmp_path / "p.json")
    np.testing.assert_allclose(again.predict(x), merged.predict(x), atol=1e-5)


def test_merge_refuses_mismatched_members() -> None:
    x, y = _data()
    a = train_probe(x, y, ["a", "b"], "m", hidden=(8,), max_epochs=2)[0]
    b = train_probe(x, y, ["a", "b"], "m", hidden=(4,), max_epochs=2)[0]
    with pytest.raises(ValueError, match="share"):
        merge_probes([a, b])


def test_folds_keep_groups_together() -> None:
    groups = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6])
    fold = fold_of(len(groups), 3, seed=1, groups=groups)
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1
    assert set(fold.tolist()) == {0, 1, 2}


def test_out_of_fold_predictions_are_honest() -> None:
    x, y = _data(200)
    probe, oof, histories = crossfit_probe(x, y, ["a", "b"], "m", folds=4, max_epochs=40)
    assert len(histories) == 4 and oof.shape == y.shape
    in_sample = np.abs(probe.predict(x) - y).mean()
    out_of_fold = np.abs(np.clip(oof, 0, 10) - y).mean()
    assert in_sample <= out_of_fold
    assert out_of_fold < np.abs(y - y.mean(axis=0)).mean() * 0.7
    assert probe.training["crossfit"]["folds"] == 4
