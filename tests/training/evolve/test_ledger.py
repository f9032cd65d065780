"""Ledger accounting: charges, statuses, the hard stop at an allocation, partial charges of long jobs,
and reading back a ledger a kill left behind."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import training.evolve.ledger as ledger_module
from training.evolve.exceptions import BudgetExhausted, LedgerError
from training.evolve.ledger import Ledger


class Clock:
    """A settable clock: the meter's time source (the real one is time.monotonic)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_doctest() -> None:
    result = doctest.testmod(ledger_module)
    assert result.attempted >= 5 and result.failed == 0


def test_running_job_stops_at_its_allocation_and_is_charged(tmp_path: Path) -> None:
    clock = Clock()
    ledger = Ledger(tmp_path / "ledger.jsonl")
    meter = ledger.meter("sweep", allocation=1.0, price_per_hour=3600.0, device="cpu", clock=clock)  # $1/s
    steps = 0

    def job() -> None:
        nonlocal steps
        with meter.running("trial"):
            while True:
                clock.now += 0.3
                steps += 1
                meter.check(f"step {steps}")

    with pytest.raises(BudgetExhausted, match=r"'sweep' spent its allocation of 1 .*at step 4"):
        job()
    assert steps == 4                                   # 1.2 s: one step past the allocation, no more
    assert ledger.spent("sweep") == pytest.approx(1.2)
    assert ledger.status("sweep") == "running"          # charged, no end recorded yet
    ledger.stop("sweep", "allocation spent")
    assert ledger.status("sweep") == "stopped"
    with pytest.raises(BudgetExhausted), meter.running("another"):
        pass                                        # refused at the start: nothing left
    # reopened from disk: the same figures
    again = Ledger(tmp_path / "ledger.jsonl")
    assert again.spent("sweep") == pytest.approx(1.2) and again.status("sweep") == "stopped"
    assert again.device_seconds("sweep") == pytest.approx(1.2)


def test_long_jobs_are_charged_in_parts(tmp_path: Path) -> None:
    clock = Clock()
    ledger = Ledger(tmp_path / "ledger.jsonl")
    meter = ledger.meter("curriculum", allocation=100.0, price_per_hour=3600.0, device="h100", devices=2,
                         clock=clock, heartbeat=10.0)
    with meter.running("bucket-128"):
        for _ in range(25):
            clock.now += 1.0
            meter.check()
    charges = [e for e in ledger.entries if e["kind"] == "charge"]
    assert [e["seconds"] for e in charges] == [10.0, 10.0, 5.0]
    assert [e.get("note") for e in charges] == ["partial", "partial", None]
    assert ledger.spent("curriculum") == pytest.approx(50.0)   # 25 s on 2 devices at $1 per device-second
    assert meter.remaining_seconds == pytest.approx(25.0)


def test_outcome_and_status(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert ledger.status("a") == "pending" and ledger.outcome("a") is None
    ledger.charge("a", seconds=10, device="cpu", price_per_hour=1.0, job="j")
    ledger.stop("a", "boom", failed=True)
    assert ledger.status("a") == "failed"
    ledger.finish("a", {"package_dir": None})
    assert ledger.status("a") == "done" and ledger.outcome("a") == {"package_dir": None}
    assert ledger.total_spent() == pytest.approx(10 / 3600)


def test_torn_last_line_is_dropped_but_corruption_inside_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.charge("a", seconds=3600, device="cpu", price_per_hour=2.0, job="j")
    with path.open("ab") as fh:
        fh.write(b'{"kind": "charge", "initiative": "a", "co')      # a kill mid-write
    assert Ledger(path).spent("a") == pytest.approx(2.0)
    path.write_bytes(b'{"kind": "charge"\n' + path.read_bytes())
    with pytest.raises(LedgerError, match=r"ledger.jsonl:1: not JSON"):
        Ledger(path)
