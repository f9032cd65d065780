"""Errors of improvement rounds."""

from __future__ import annotations

from training.exceptions import TrainingError


class EvolveError(TrainingError):
    """A round cannot be planned, run or reported; names the initiative when known."""


class PlanError(EvolveError):
    """The plan file is invalid: every problem found is listed, with the arithmetic where it is arithmetic."""

    def __init__(self, problems: list[str], *, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(where + "invalid plan:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems
        self.path = path


class BudgetExhausted(EvolveError):
    """An initiative's allocation is spent: the job stops here (its checkpoints let a later run go on)."""


class LedgerError(EvolveError):
    """The ledger cannot be read or written (a corrupt line names its line number)."""
