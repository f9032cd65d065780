"""The sweep initiative: a real Optuna study in real SQLite (and PostgreSQL when one answers) over a student
on the tiny Gemma base or a MiniLM probe, charged to a real Ledger."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from scoring.package import FilterPackage, load_package
from tests.training.evolve.initiatives._parents import context, shared_parent
from training.evolve.exceptions import BudgetExhausted
from training.evolve.initiatives import sweep
from training.evolve.ledger import Ledger

pytestmark = pytest.mark.timeout(120)
# One small point of the student's space: the test is about the study and the budget, not the search.
STUDENT = {"epochs": 1, "batch_size": 8, "lr": [1e-4, 1e-3], "max_length": [32, 48], "lora_r": [2, 4],
           "prune_startup": 0}
PROBE = {"probe_hidden": [[8], [16]], "probe_max_epochs": 30, "probe_report_every": 5}
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, tiny_gemma: Path) -> tuple[FilterPackage, Path]:
    return shared_parent(tmp_path_factory.getbasetemp(), tiny_gemma)


@pytest.fixture(scope="module")
def probe_parent(tmp_path_factory: pytest.TempPathFactory) -> tuple[FilterPackage, Path]:
    return shared_parent(tmp_path_factory.getbasetemp(), None)


def test_pareto_front_on_known_points() -> None:
    # (cost, MAE): 1 and 4 tie and both stay; 2 is beaten by 1 on both; 5 is beaten by 3 on MAE at equal cost.
    points = [(10.0, 1.0), (4.0, 2.0), (5.0, 2.5), (1.0, 3.0), (4.0, 2.0), (1.0, 3.5), (20.0, 1.0)]
    assert sweep.pareto_front(points) == [3, 1, 4, 0]
    assert sweep.pareto_front([]) == []
    assert sweep.pareto_front([(2.0, 2.0)]) == [0]
    rows = [sweep.TrialRow(i, "complete", mae, cost, cost / 1000, {"lr": 0.001})
            for i, (cost, mae) in enumerate(points)]
    rows.append(sweep.TrialRow(9, "pruned", 0.1, 0.5, 0.0005, {}))    # pruned: never on the front
    front, table = sweep.pareto_table(rows)
    assert [r.number for r in front] == [3, 1, 4, 0]
    assert table.count("\n") == 1 + len(front) and "| 3 | 3.0000 | 1.0 |" in table


def test_params_refuse_empty_ranges() -> None:
    with pytest.raises(ValueError, match="lr range"):
        sweep.Params.model_validate({"lr": [1e-3, 1e-5]})
    with pytest.raises(ValueError, match="extra"):
        sweep.Params.model_validate({"trails": 3})


def _device_seconds(ledger: Ledger, job: str) -> float:
    return sum(e["device_seconds"] for e in ledger.entries if e["kind"] == "charge" and e["job"] == job)


def test_student_sweep_records_trials_and_a_rerun_resumes(parent: tuple[FilterPackage, Path], tmp_path: Path) -> None:
    package, data = parent
    ctx = context(tmp_path, package, data, "sweep", {**STUDENT, "trials": 2})
    outcome = sweep.run(ctx)
    db = tmp_path / "work" / "checkpoints" / "optuna.db"
    study = optuna.load_study(study_name="fluxscore-sweep-demo", storage=f"sqlite:///{db}")
    assert len(study.trials) == 2
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for trial in study.trials:
        # One job per trial in the ledger, and the same device seconds on the trial.
        assert trial.user_attrs["device_seconds"] == pytest.approx(_device_seconds(ledger, f"trial-{trial.number}"))
        assert trial.user_attrs["device_seconds"] > 0
    assert outcome.package_dir is not None
    candidate = load_package(outcome.package_dir)
    candidate.verify()
    assert candidate.version == "1.0.0-sweep"
    best = study.best_trial
    assert outcome.notes["best"]["trial"] == best.number and outcome.notes["best"]["reused"] is True
    assert candidate.config.stage2 is not None and candidate.config.stage2.max_length == best.params["max_length"]
    assert outcome.notes["pareto"] and Path(outcome.notes["pareto_plot"]).stat().st_size > 1000
    assert "| trial | validation MAE |" in outcome.notes["pareto_table"]

    # A rerun with a budget of 3 runs the one missing trial only.
    rerun = context(tmp_path, package, data, "sweep", {**STUDENT, "trials": 3})
    again = sweep.run(rerun)
    study = optuna.load_study(study_name="fluxscore-sweep-demo", storage=f"sqlite:///{db}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert again.notes["trials_this_run"] == 1
    trial_jobs = [e["job"] for e in Ledger(tmp_path / "ledger.jsonl").entries if e["job"].startswith("trial-")]
    assert sorted(set(trial_jobs)) == ["trial-0", "trial-1", "trial-2"]


def test_no_trial_starts_once_the_allocation_is_spent(probe_parent: tuple[FilterPackage, Path],
                                                       tmp_path: Path) -> None:
    package, data = probe_parent
    ledger = Ledger(tmp_path / "ledger.jsonl")
    # The clock jumps an hour ($3.60) during the first trial: with $5 allocated and 50% reserved, the first
    # trial ends and no second one starts; the candidate is built from the reserve.
    now = [0.0]

    def progress(description: str, completed: int, total: int | None) -> None:
        if description.startswith("sweep trial 0 epoch"):
            now[0] = 3600.0

    ctx = context(tmp_path, package, data, "sweep", {**PROBE, "trials": 4, "reserve": 0.5}, ledger=ledger)
    ctx = replace(ctx, meter=ledger.meter("sweep", allocation=5.0, price_per_hour=3.6, device="cpu",
                                          clock=lambda: now[0]), progress=progress)
    outcome = sweep.run(ctx)
    study = optuna.load_study(study_name="fluxscore-sweep-demo",
                              storage=f"sqlite:///{tmp_path / 'work' / 'checkpoints' / 'optuna.db'}")
    assert len(study.trials) == 1 and outcome.notes["stopped"].startswith("no further trial")
    assert outcome.notes["target"] == "probe" and load_package(outcome.package_dir).version == "1.0.0-sweep"
    assert ledger.spent("sweep") == pytest.approx(3.6)

    # Allocation spent outright: a trial stops at its next check and the initiative stops with it.
    ledger2 = Ledger(tmp_path / "ledger2.jsonl")
    now[0] = 0.0
    ctx2 = context(tmp_path, package, data, "sweep", {**PROBE, "trials": 4, "reserve": 0.0,
                                                     "study_name": "hard-stop"}, ledger=ledger2, work="work2")
    ctx2 = replace(ctx2, meter=ledger2.meter("sweep", allocation=1.0, price_per_hour=3.6, device="cpu",
                                             clock=lambda: now[0]), progress=progress)
    with pytest.raises(BudgetExhausted):
        sweep.run(ctx2)
    study = optuna.load_study(study_name="hard-stop",
                              storage=f"sqlite:///{tmp_path / 'work2' / 'checkpoints' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


def _postgres_answers() -> bool:
    try:
        done = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", "select 1"],
                              capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_study_shared_in_postgresql(probe_parent: tuple[FilterPackage, Path], tmp_path: Path) -> None:
    if not _postgres_answers():
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432 (user postgres, database test)")
    package, data = probe_parent
    name = f"h4c-test-{uuid.uuid4().hex[:8]}"
    params = {**PROBE, "trials": 1, "storage": POSTGRES, "study_name": name}
    # Two machines: two work directories, one study. The second finds the trial done and trains none.
    first = sweep.run(context(tmp_path, package, data, "sweep", params, work="machine-a"))
    second = sweep.run(context(tmp_path, package, data, "sweep", params, work="machine-b"))
    try:
        assert first.notes["trials_this_run"] == 1 and second.notes["trials_this_run"] == 0
        # Machine b has no files of the best trial: it retrained its settings for the candidate.
        assert second.notes["best"]["reused"] is False
        assert second.notes["best"]["trial"] == first.notes["best"]["trial"]
        assert "@" not in second.notes["storage"] or "***" in second.notes["storage"] or \
            second.notes["storage"].startswith("postgresql")
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)
