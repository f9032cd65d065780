"""Escalation threshold: what it is compared with, how it is chosen, and how it is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scoring.aggregate import aggregate
from scoring.exceptions import PackageError
from scoring.package import FilterConfig, load_config
from training.threshold import (
    STAGE1_FINAL,
    choose,
    evaluate,
    expected_speedup,
    gate_student,
    oracle_positive,
    routed_errors,
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


# -- students must earn their escalations -----------------------------------------------------------

PLAIN = FilterConfig.model_validate({
    "name": "g", "version": "1.0.0",
    "dimensions": [{"name": "a", "weight": 0.5, "description": "a"}, {"name": "b", "weight": 0.5, "description": "b"}],
    "stage1": {"embedding_model": "m", "probe": "p.safetensors", "probe_meta": "p.json", "threshold": 3.0},
    "oracle_prompt": "prompt.md"})


def _rows(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oracle scores, a probe off by ~1 everywhere, and the probe's stage-1 estimates."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 10, size=(n, 2)).round()
    probe = np.clip(target + rng.normal(0, 1.0, size=target.shape), 0, 10)
    return target, probe, stage1_estimates(PLAIN, probe)


def test_a_worse_student_gets_no_articles() -> None:
    target, probe, est = _rows()
    student = np.clip(target + np.random.default_rng(1).normal(0, 1.6, size=target.shape), 0, 10)
    routing = gate_student(PLAIN, est, probe, student, target, fn_threshold=2.0)
    assert routing.decision == "stage1" and routing.threshold == STAGE1_FINAL
    assert not routing.student_better and routing.student["mae"] > routing.probe["mae"]
    assert routing.escalated == 0
    assert "not better" in routing.reason and f"{routing.student['mae']:.3f}" in routing.reason
    # On request the false-negative threshold stands, and the record says the student is worse.
    kept = gate_student(PLAIN, est, probe, student, target, fn_threshold=2.0, keep=True)
    assert kept.decision == "kept" and kept.threshold == 2.0 and kept.routes_to_worse_student


def test_a_student_better_everywhere_keeps_the_false_negative_threshold() -> None:
    target, probe, est = _rows()
    student = np.clip(target + np.random.default_rng(2).normal(0, 0.3, size=target.shape), 0, 10)
    routing = gate_student(PLAIN, est, probe, student, target, fn_threshold=2.0)
    assert routing.decision == "student" and routing.threshold == 2.0 and routing.student_better
    assert routing.escalated == int((est >= 2.0).sum())
    assert routing.escalated_student_mae < routing.escalated_probe_mae


def test_a_student_that_helps_only_high_up_gets_only_those() -> None:
    target, probe, est = _rows(400)
    rng = np.random.default_rng(3)
    # Excellent on articles the probe puts at 6 or more, poor below: better overall, worse under 6.
    high = (est >= 6.0)[:, None]
    student = np.clip(np.where(high, target + rng.normal(0, 0.1, size=target.shape),
                               target + rng.normal(0, 1.3, size=target.shape)), 0, 10)
    routing = gate_student(PLAIN, est, probe, student, target, fn_threshold=1.0)
    assert routing.student_better
    assert routing.decision == "raised" and 5.0 <= routing.threshold <= 7.0
    assert routing.threshold in {np.floor(v * 1e4) / 1e4 for v in est} | {1.0}
    up = est >= routing.threshold
    assert routing.escalated == int(up.sum())
    # No other threshold at or above the false-negative one does better on these rows.
    def cascade(t: float) -> float:
        return routed_errors(PLAIN, est, t, probe, student, target)["routed_mae"]
    best = cascade(routing.threshold)
    assert all(best <= cascade(t) + 1e-9 for t in np.arange(1.0, 10.0, 0.25))
    assert cascade(routing.threshold) < cascade(1.0)


def test_too_few_rows_above_any_threshold_mean_stage1_final() -> None:
    target, probe, est = _rows(30)
    student = target.copy()  # perfect, but only 3 rows lie above the false-negative threshold
    fn = float(np.sort(est)[-3])
    routing = gate_student(PLAIN, est, probe, student, target, fn_threshold=fn, min_rows=10)
    assert routing.decision == "stage1" and routing.threshold == STAGE1_FINAL
    assert "better overall" in routing.reason


def test_gating_needs_the_same_rows() -> None:
    target, probe, est = _rows(20)
    with pytest.raises(ValueError, match="same rows"):
        gate_student(PLAIN, est, probe, probe[:10], target, fn_threshold=1.0)
