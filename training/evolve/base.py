"""What a round hands an initiative, and what an initiative hands back.

An initiative is a function ``run(ctx: Context) -> Outcome`` registered under its kind in
:data:`training.evolve.initiatives.INITIATIVES`. It trains only on ``ctx.train_data`` (the round's real
labelled data with the held-out articles removed, plus whatever it makes itself), keeps everything it
writes under ``ctx.work``, charges its device time through ``ctx.meter`` (``with ctx.meter.running(job):``
around work, ``ctx.meter.check()`` from progress callbacks), and returns a complete candidate package
(trained, calibrated, thresholded, manifest written: :func:`training.steps.run_export` passes) that the
round then judges on the held-out set. A rerun after a stop finds its own checkpoints under
``ctx.checkpoints`` and goes on from them.

When the allocation is spent, :meth:`~training.evolve.ledger.Meter.check` raises
:class:`~training.evolve.exceptions.BudgetExhausted`. Left to propagate, the round records the initiative
as ``stopped`` and it has **no outcome** (nothing is judged; a resumed round with budget left runs it again
from its checkpoints). An initiative that has something worth judging (the best trial of a sweep, the last
finished curriculum bucket) catches it, finishes that candidate without further metered work, and returns
its best-so-far :class:`Outcome` (say so in ``notes``, e.g. ``{"stopped_early": true}``): the round records
it as ``done`` and judges it. Any other exception records the initiative as ``failed`` with the error; the
round goes on with the others (dependants of an initiative without an outcome are skipped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from scoring.package import FilterPackage
from training.evolve.ledger import Meter
from training.steps import ProgressFn, _quiet


@dataclass(frozen=True)
class Context:
    initiative: str                    # the plan's name for this initiative
    kind: str                          # augment | feedback | curriculum | sweep | distill
    package: FilterPackage             # the current package: the parent every candidate is compared with
    train_data: Path                   # labelled JSONL, real rows only, held-out articles removed
    heldout_ids: frozenset[str]        # articles no initiative may train on (train_data holds none of them)
    work: Path                         # this initiative's directory (exists)
    meter: Meter
    params: Mapping[str, Any] = field(default_factory=dict)  # the plan's per-initiative parameters
    device: str = "cpu"
    seed: int = 0
    cache_dir: Path | None = None      # embedding cache shared by the round's initiatives
    labels_db: str | None = None       # label store URL ([al]) for human labels and feedback, if any
    progress: ProgressFn = _quiet
    # A teacher package for distillation, other initiatives' outcomes for dependants, by initiative name.
    upstream: Mapping[str, Outcome] = field(default_factory=dict)

    @property
    def checkpoints(self) -> Path:
        path = self.work / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Outcome:
    package_dir: Path | None           # the candidate package; None: the initiative made nothing to judge
    notes: dict[str, Any] = field(default_factory=dict)          # what the report should say (JSON)
    metrics: dict[str, float] = field(default_factory=dict)      # its own figures, e.g. articles_per_s

    def to_json(self) -> dict[str, Any]:
        return {"package_dir": str(self.package_dir) if self.package_dir else None, "notes": self.notes,
                "metrics": self.metrics}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Outcome:
        raw = body.get("package_dir")
        return cls(package_dir=Path(raw) if raw else None, notes=dict(body.get("notes") or {}),
                   metrics={k: float(v) for k, v in (body.get("metrics") or {}).items()})


class Initiative(Protocol):
    def __call__(self, ctx: Context) -> Outcome: ...
