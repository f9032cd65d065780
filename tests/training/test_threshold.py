"""Escalation threshold: what it is compared with, how it is chosen, and how it is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scoring.aggregate import aggregate
from scoring.exceptions import PackageError
from scoring.package import FilterConfig, load_config
from training.threshold import (
    choose,
    evaluate,
    expected_speedup,
    oracle_positive,
    stage1_estimates,
    wilson_upper,
    write_threshold,
)

CONFIG = FilterConfig.model_validate({
    "name": "f", "version": "1.0.0",
    "dimensions": [{"name": "a", "weight": 0.5, "description": "a"}, {"name": "b", "weight": 0.5, "description": "b"}],
    "gatekeepers": [{"dimension": "b", "minimum": 3.0, "cap": 2.0}],
    "stage1": {"embedding_model": "m", "probe": "p.safetensors", "probe_meta": "p.json", "threshold": 3.0},
    "oracle_prompt": "prompt.md"})


def test_estimates_are_uncapped_and_positives_capped() -> None:
    scores = np.array([[9.0, 1.0], [5.0, 5.0], [1.0, 1.0]])
    np.testing.assert_allclose(stage1_estimates(CONFIG, scores), [5.0, 5.0, 1.0])
    assert aggregate(CONFIG, scores[0]).tier.value == "LOW"  # the gatekeeper caps it
    assert oracle_positive(CONFIG, scores).tolist() == [False, True, False]


def _sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 10, n)
    return truth + rng.normal(0, 0.8, n), truth >= 4.0


def test_empirical_sits_below_the_lowest_positive() -> None:
    est = np.array([0.5, 1.0, 2.0, 3.0, 4.5, 5.0])
    pos = np.array([False, False, False, True, True, True])
    choice = choose(est, pos, target=0.0, method="empirical")
    assert 2.0 < choice.threshold <= 3.0
    assert choice.holdout["false_negatives"] == 0
    assert choice.holdout["skip_rate"] == 0.5


def test_smoothed_is_more_cautious_than_empirical_and_holds_out_of_sample() -> None:
    est, pos = _sample(400, 0)
    emp = choose(est, pos, method="empirical")
    smooth = choose(est, pos, method="smoothed")
    assert smooth.threshold <= emp.threshold
    new_est, new_pos = _sample(4000, 1)
    assert evaluate(new_est, new_pos, smooth.threshold)["fn_rate"] <= 0.03
    assert smooth.holdout["skip_rate"] > 0.1


def test_wilson_needs_many_positives() -> None:
    est, pos = _sample(60, 2)
    choice = choose(est, pos, method="wilson")
    assert choice.threshold == 0.0 and "no threshold" in choice.note
    assert wilson_upper(0, 200) < 0.02 < wilson_upper(0, 100)


def test_no_positives_means_no_skipping() -> None:
    choice = choose(np.array([1.0, 2.0]), np.array([False, False]))
    assert choice.threshold == 0.0 and "no MEDIUM+" in choice.note


def test_test_split_is_reported_and_speedup_defined() -> None:
    est, pos = _sample(300, 3)
    test_est, test_pos = _sample(300, 4)
    choice = choose(est, pos, test_estimates=test_est, test_positive=test_pos, cost_ratio=0.1)
    assert choice.test is not None and choice.test["n"] == 300
    assert choice.speedup_test == pytest.approx(1 / (0.1 + 1 - choice.test["skip_rate"]))
    assert expected_speedup(0.5, 0.0) == 2.0
    with pytest.raises(ValueError, match="method"):
        choose(est, pos, method="magic")


def test_write_threshold_preserves_the_rest(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "filters" / "demo" / "1.0.0" / "filter.yaml"
    (tmp_path / "filter.yaml").write_text(source.read_text())
    before = source.read_text().splitlines()
    write_threshold(tmp_path, 2.35)
    after = (tmp_path / "filter.yaml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].strip() == "threshold: 2.35"
    assert load_config(tmp_path).stage1.threshold == 2.35


def test_write_threshold_needs_the_line(tmp_path: Path) -> None:
    (tmp_path / "filter.yaml").write_text("name: x\nstage1:\n  probe: p\n")
    with pytest.raises(PackageError, match=r"no stage1\.threshold"):
        write_threshold(tmp_path, 1.0)
