"""The runner: capped meters, the hard stop, dependants, side-by-side steps, resume after a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ConfigDict

from tests.training.evolve.conftest import write_plan
from training.evolve.base import Context, Outcome
from training.evolve.exceptions import BudgetExhausted, EvolveError
from training.evolve.ledger import Ledger
from training.evolve.runner import choose_heldout, run_round
from training.synth import SynthConfig, generate, write_jsonl

REPO = Path(__file__).resolve().parents[3]


class SpendParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seconds_per_step: float = 10.0
    steps: int = 1000
    keep_best: bool = False         # catch BudgetExhausted and return what it has


def spend(ctx: Context) -> Outcome:
    """Charges device time step by step, as a training loop would, until done or stopped."""
    p = SpendParams.model_validate(dict(ctx.params))
    done = 0
    try:
        for i in range(p.steps):
            ctx.meter.check(f"step {i}")
            ctx.meter.charge(p.seconds_per_step, job=f"step-{i}")
            done += 1
    except BudgetExhausted:
        if not p.keep_best:
            raise
    return Outcome(package_dir=None, notes={"steps": done, "upstream": sorted(ctx.upstream),
                                            "allocation": ctx.meter.allocation})


def broken(ctx: Context) -> Outcome:
    raise ValueError(f"bad data in {ctx.train_data.name}")


INITIATIVES = {"spend": spend, "broken": broken}
PARAMS: dict[str, type[BaseModel]] = {"spend": SpendParams, "broken": SpendParams}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runner-data") / "labelled.jsonl"
    write_jsonl(generate(SynthConfig(n=60, seed=5, commerce_fraction=0.0)), path)
    return path


def _init(name: str, rank: int, allocation: float, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "spend", "rank": rank, "filter": "demo", "allocation": allocation,
            "device": "cpu", **kw}


def _plan(tmp_path: Path, data: Path, initiatives: list[dict[str, Any]], *, budget: float = 10.0,
          cpus: int = 1) -> Path:
    # $3600 per hour: one second costs $1, so figures read as seconds
    return write_plan(tmp_path / "plan.yaml", {
        "round": "r", "budget": budget, "devices": {"cpu": {"count": cpus, "price_per_hour": 3600.0}},
        "heldout": {"fraction": 0.2, "min_articles": 5}, "data": [str(data)], "initiatives": initiatives})


def _run(plan: Path, work: Path, **kw: Any) -> Any:
    return run_round(plan, work, initiatives=INITIATIVES, params=PARAMS, evaluate=False, report=False, **kw)


def test_hard_stop_caps_and_round_total(tmp_path: Path, small_data: Path) -> None:
    plan = _plan(tmp_path, small_data, [
        _init("a", 1, 25.0),                                                   # stopped at its allocation
        _init("b", 2, 50.0, params={"keep_best": True}, depends_on=["a"]),    # a has no outcome: skipped
        _init("c", 3, 50.0, params={"keep_best": True}),                       # capped by the round's budget
        _init("d", 4, 1.0, kind="broken")], budget=126.0)
    result = _run(plan, tmp_path / "work")
    ledger = result.ledger
    assert ledger.status("a") == "stopped" and ledger.spent("a") == pytest.approx(30.0)  # one step past 25
    assert ledger.status("b") == "stopped" and ledger.spent("b") == 0.0
    assert any(e.get("reason") == "skipped: a (depended on) has no outcome" for e in ledger.entries)
    # c may spend what the round has left: 126 - 30 = 96 > its 50; it stops itself and returns its best
    assert ledger.status("c") == "done" and ledger.spent("c") == pytest.approx(50.0)
    assert result.outcomes["c"].notes["steps"] == 5
    assert ledger.status("d") == "failed"
    assert any(e.get("reason") == "ValueError: bad data in train.jsonl" for e in ledger.entries)
    assert ledger.total_spent() == pytest.approx(80.0)
    # held-out ids are not in the train file, and the split is stable
    held = set(orjson.loads((tmp_path / "work" / "heldout.json").read_bytes())["ids"])
    train_ids = {orjson.loads(line)["id"] for line in (tmp_path / "work" / "train.jsonl").read_bytes().splitlines()}
    assert held and not held & train_ids and len(held) + len(train_ids) == 60


def test_allocation_capped_by_what_the_round_has_left(tmp_path: Path, small_data: Path) -> None:
    plan = _plan(tmp_path, small_data, [_init("a", 1, 60.0, params={"seconds_per_step": 7.0}),
                                        _init("b", 2, 40.0, params={"keep_best": True, "seconds_per_step": 1.0})],
                 budget=100.0)
    result = _run(plan, tmp_path / "work")
    # a overran by its last step (63 of 60); b gets the 37 the round has left, not its 40
    assert result.ledger.spent("a") == pytest.approx(63.0)
    assert result.outcomes["b"].notes["allocation"] == pytest.approx(37.0)
    assert result.ledger.total_spent() == pytest.approx(100.0)


def test_existing_round_needs_resume(tmp_path: Path, small_data: Path) -> None:
    plan = _plan(tmp_path, small_data, [_init("a", 1, 5.0, params={"steps": 1})])
    _run(plan, tmp_path / "work")
    with pytest.raises(EvolveError, match="pass --resume"):
        _run(plan, tmp_path / "work")
    again = _run(plan, tmp_path / "work", resume=True)
    assert len([e for e in again.ledger.entries if e["kind"] == "charge"]) == 1   # done: not run again


def test_side_by_side_on_two_devices(tmp_path: Path, small_data: Path) -> None:
    barrier = threading.Barrier(2, timeout=20)
    threads: set[str] = set()

    def meet(ctx: Context) -> Outcome:
        with ctx.meter.running("meet"):
            threads.add(threading.current_thread().name)
            barrier.wait()        # only returns when the other initiative runs at the same time
        return Outcome(package_dir=None, notes={"device": ctx.device})

    plan = _plan(tmp_path, small_data, [_init("a", 1, 5.0, kind="meet"), _init("b", 2, 5.0, kind="meet"),
                                        _init("c", 3, 5.0, kind="spend", params={"steps": 1},
                                              depends_on=["a", "b"])], cpus=2, budget=15.0)
    result = run_round(plan, tmp_path / "work", initiatives={**INITIATIVES, "meet": meet},
                       params={**PARAMS, "meet": SpendParams}, evaluate=False, report=False)
    assert len(threads) == 2
    assert {result.status(n) for n in "abc"} == {"done"}
    assert result.outcomes["c"].notes["upstream"] == ["a", "b"]


def test_heldout_choice_is_stable_and_stratified(small_data: Path) -> None:
    from scoring.package import resolve

    records = [orjson.loads(line) for line in small_data.read_bytes().splitlines()]
    pkg = resolve("demo")
    ids = choose_heldout(records, pkg, fraction=0.25, seed=3)
    assert ids == choose_heldout(list(reversed(records)), pkg, fraction=0.25, seed=3)
    assert ids != choose_heldout(records, pkg, fraction=0.25, seed=4)
    assert abs(len(ids) - 15) <= 2


SCRIPT = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from training.evolve.base import Outcome
    from training.evolve.runner import run_round
    from tests.training.evolve.test_runner import PARAMS, spend

    plan, work, go = (Path(p) for p in sys.argv[1:4])

    def waits(ctx):
        marker = ctx.checkpoints / "runs"
        runs = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(runs))     # a checkpoint the rerun finds
        spent_before, allocation = ctx.meter.spent, ctx.meter.allocation
        with ctx.meter.running("wait"):
            while not go.exists():
                ctx.meter.check()
                time.sleep(0.02)
        return Outcome(package_dir=None, notes={"runs": runs, "spent_before": spent_before,
                                                "allocation": allocation})

    def quick(ctx):
        marker = ctx.work / "calls"
        marker.write_text(str(int(marker.read_text()) + 1 if marker.exists() else 1))
        return spend(ctx)

    run_round(plan, work, resume=len(sys.argv) > 4, initiatives={"spend": quick, "wait": waits},
              params={**PARAMS, "wait": PARAMS["spend"]}, evaluate=False, report=False, heartbeat=0.1)
''')


def test_resume_after_kill(tmp_path: Path, small_data: Path) -> None:
    plan = _plan(tmp_path, small_data, [_init("quick", 1, 3.0, params={"steps": 2, "seconds_per_step": 1.0}),
                                        _init("slow", 2, 1000.0, kind="wait")], budget=2000.0)
    work, go = tmp_path / "work", tmp_path / "go"
    script = tmp_path / "round.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(plan), str(work), str(go)], cwd=REPO, env=env,
                            start_new_session=True)
    ledger_path = work / "ledger.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ledger_path.exists() and len([e for e in Ledger(ledger_path).entries
                                         if e["initiative"] == "slow" and e["kind"] == "charge"]) >= 3:
            break
        assert proc.poll() is None, "the round ended before it was killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Ledger(ledger_path)
    assert before.status("quick") == "done" and before.status("slow") == "running"
    slow_spent, quick_spent = before.spent("slow"), before.spent("quick")
    assert slow_spent > 0 and quick_spent == pytest.approx(2.0)

    go.touch()
    done = subprocess.run([sys.executable, str(script), str(plan), str(work), str(go), "--resume"], cwd=REPO,
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    after = Ledger(ledger_path)
    assert (work / "initiatives" / "quick" / "calls").read_text() == "1"        # done work was not redone
    assert after.spent("quick") == pytest.approx(quick_spent)
    assert after.status("slow") == "done"
    notes = after.outcome("slow")["notes"]  # type: ignore[index]
    assert notes["runs"] == 2                                                  # it found its checkpoint
    assert notes["spent_before"] == pytest.approx(slow_spent)                  # what the kill left charged
    assert notes["allocation"] == pytest.approx(1000.0)                        # remaining = 1000 - spent
    assert after.total_spent() == pytest.approx(after.spent("quick") + after.spent("slow"))
    assert after.spent("slow") >= slow_spent
