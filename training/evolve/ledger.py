"""The round's ledger: every second of device time a job uses, what it cost, and what each initiative ended with.

One JSONL file per round, appended a line at a time and flushed to disk before the work it records goes
on, so a round killed at any point resumes from what the file says (:meth:`Ledger.spent`,
:meth:`Ledger.outcome`). Costs are derived from device-seconds and the plan's price per device-hour at
the moment of charging, and stored with the line, so a report reads figures, never recomputes them.

A :class:`Meter` is one initiative's view of the ledger: it charges device time as jobs run and raises
:class:`~training.evolve.exceptions.BudgetExhausted` at the first check after the allocation is spent.
Initiatives call :meth:`Meter.check` from their progress callbacks (every training step), so a job
overruns its allocation by at most one step.

>>> import tempfile, pathlib
>>> ledger = Ledger(pathlib.Path(tempfile.mkdtemp()) / "ledger.jsonl")
>>> meter = ledger.meter("sweep", allocation=1.0, price_per_hour=36.0, device="cpu")
>>> meter.charge(50.0, job="trial-0")          # 50 s at $36/h = $0.50
0.5
>>> round(meter.remaining, 2), meter.exhausted
(0.5, False)
>>> meter.charge(60.0, job="trial-1")
0.6
>>> meter.exhausted, round(ledger.spent("sweep"), 2), round(ledger.total_spent(), 2)
(True, 1.1, 1.1)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from training.evolve.exceptions import BudgetExhausted, LedgerError

CHARGE, DONE, STOPPED, FAILED = "charge", "done", "stopped", "failed"
_KINDS = (CHARGE, DONE, STOPPED, FAILED)


class Ledger:
    """An append-only JSONL ledger of one round (safe for several threads of one process)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries: list[dict[str, Any]] = []
        lines = self.path.read_bytes().split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if n == len(lines) or (n == len(lines) - 1 and not lines[-1].strip()):
                    # A kill mid-write leaves a torn last line: that charge never completed, drop it.
                    continue
                raise LedgerError(f"{self.path}:{n}: not JSON ({exc})") from None
            if not isinstance(entry, dict) or entry.get("kind") not in _KINDS or "initiative" not in entry:
                raise LedgerError(f"{self.path}:{n}: not a ledger entry: {line[:120]!r}")
            entries.append(entry)
        return entries

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"at": datetime.now(UTC).isoformat(timespec="milliseconds"), **entry}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as fh:
                fh.write(orjson.dumps(entry) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._entries.append(entry)
        return entry

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every entry so far, oldest first (copies)."""
        with self._lock:
            return [dict(e) for e in self._entries]

    def charge(self, initiative: str, *, seconds: float, device: str, price_per_hour: float, job: str,
               devices: int = 1, note: str | None = None) -> float:
        """Record ``seconds`` of wall time on ``devices`` devices of kind ``device``; returns the cost."""
        if seconds < 0 or devices < 1:
            raise LedgerError(f"{initiative}: cannot charge {seconds} s on {devices} devices")
        device_seconds = seconds * devices
        cost = device_seconds * price_per_hour / 3600.0
        entry: dict[str, Any] = {"kind": CHARGE, "initiative": initiative, "job": job, "device": device,
                                 "devices": devices, "seconds": round(seconds, 3),
                                 "device_seconds": round(device_seconds, 3),
                                 "price_per_hour": price_per_hour, "cost": cost}
        if note:
            entry["note"] = note
        self._append(entry)
        return cost

    def finish(self, initiative: str, outcome: dict[str, Any]) -> None:
        """The initiative finished; ``outcome`` (JSON) is what a resumed round reuses instead of rerunning it."""
        self._append({"kind": DONE, "initiative": initiative, "outcome": outcome})

    def stop(self, initiative: str, reason: str, *, failed: bool = False) -> None:
        """The initiative stopped before finishing: its allocation was spent, or it failed (``failed``)."""
        self._append({"kind": FAILED if failed else STOPPED, "initiative": initiative, "reason": reason})

    def spent(self, initiative: str) -> float:
        """Money charged to one initiative so far."""
        with self._lock:
            return sum(e["cost"] for e in self._entries if e["kind"] == CHARGE and e["initiative"] == initiative)

    def device_seconds(self, initiative: str) -> float:
        with self._lock:
            return sum(e["device_seconds"] for e in self._entries
                       if e["kind"] == CHARGE and e["initiative"] == initiative)

    def total_spent(self) -> float:
        with self._lock:
            return sum(e["cost"] for e in self._entries if e["kind"] == CHARGE)

    def outcome(self, initiative: str) -> dict[str, Any] | None:
        """The outcome of the initiative's last finish, or None if it never finished."""
        with self._lock:
            done = [e for e in self._entries if e["kind"] == DONE and e["initiative"] == initiative]
        return dict(done[-1]["outcome"]) if done else None

    def status(self, initiative: str) -> str:
        """``done``, ``stopped``, ``failed``, ``running`` (charged, no end recorded) or ``pending``."""
        with self._lock:
            mine = [e["kind"] for e in self._entries if e["initiative"] == initiative]
        if not mine:
            return "pending"
        last_end = next((k for k in reversed(mine) if k != CHARGE), None)
        return {DONE: "done", STOPPED: "stopped", FAILED: "failed"}.get(last_end or "", "running")

    def meter(self, initiative: str, *, allocation: float, price_per_hour: float, device: str,
              devices: int = 1, clock: Callable[[], float] = time.monotonic, heartbeat: float = 30.0) -> Meter:
        return Meter(self, initiative, allocation=allocation, price_per_hour=price_per_hour, device=device,
                     devices=devices, clock=clock, heartbeat=heartbeat)


class Meter:
    """One initiative's allocation: charges device time to the ledger and stops the job when it is spent."""

    def __init__(self, ledger: Ledger, initiative: str, *, allocation: float, price_per_hour: float, device: str,
                 devices: int = 1, clock: Callable[[], float] = time.monotonic, heartbeat: float = 30.0) -> None:
        if allocation < 0 or price_per_hour <= 0:
            raise LedgerError(f"{initiative}: allocation must be >= 0 and price per hour > 0 "
                              f"(got {allocation}, {price_per_hour})")
        self.ledger = ledger
        self.initiative = initiative
        self.allocation = allocation
        self.price_per_hour = price_per_hour
        self.device = device
        self.devices = devices
        self._clock = clock
        # A running job is charged at the first check after every ``heartbeat`` seconds, not only when it
        # ends: a process killed mid-job loses at most that much of its device time from the ledger.
        self.heartbeat = heartbeat
        self._job: str | None = None
        self._mark: float | None = None  # end of what the job being timed by running() has been charged

    def _running_cost(self) -> float:
        if self._mark is None:
            return 0.0
        return (self._clock() - self._mark) * self.devices * self.price_per_hour / 3600.0

    def _flush(self, *, final: bool) -> None:
        if self._mark is None or self._job is None:
            return
        now = self._clock()
        seconds, self._mark = now - self._mark, now
        self.charge(seconds, job=self._job, note=None if final else "partial")

    @property
    def spent(self) -> float:
        """Charged so far, including the job running now."""
        return self.ledger.spent(self.initiative) + self._running_cost()

    @property
    def remaining(self) -> float:
        return max(0.0, self.allocation - self.spent)

    @property
    def remaining_seconds(self) -> float:
        """Wall seconds left on this meter's devices."""
        return self.remaining * 3600.0 / (self.price_per_hour * self.devices)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.allocation

    def check(self, where: str = "") -> None:
        """Raise :class:`BudgetExhausted` once the allocation is spent (call it between steps)."""
        if self._mark is not None and self._clock() - self._mark >= self.heartbeat:
            self._flush(final=False)
        if self.exhausted:
            at = f" at {where}" if where else ""
            raise BudgetExhausted(f"initiative {self.initiative!r} spent its allocation of {self.allocation:g}"
                                  f" ({self.spent:.4g} charged){at}")

    def charge(self, seconds: float, *, job: str, note: str | None = None) -> float:
        return self.ledger.charge(self.initiative, seconds=seconds, device=self.device,
                                  price_per_hour=self.price_per_hour, job=job, devices=self.devices, note=note)

    @contextmanager
    def running(self, job: str) -> Iterator[None]:
        """Time a job and charge its wall time when it ends, also when it fails or is stopped.

        :meth:`check` inside the block counts the time elapsed so far, so a progress callback that calls
        it stops the job as soon as the allocation is spent; a long job is charged in parts (``note: partial``)
        every ``heartbeat`` seconds, at a check."""
        if self._mark is not None:
            raise LedgerError(f"{self.initiative}: job {job!r} started inside another job")
        self.check(f"start of {job}")
        self._job, self._mark = job, self._clock()
        try:
            yield
        finally:
            self._flush(final=True)
            self._job = self._mark = None
