"""Errors of training: bad training data or a run that cannot go on."""

from __future__ import annotations

from typing import Any

from scoring.exceptions import FluxscoreError


class TrainingError(FluxscoreError):
    """Training cannot start or continue; names the filter and the step when known."""

    def __init__(self, message: str, *, filter: str | None = None, step: str | None = None,
                 **context: Any) -> None:
        super().__init__(message, filter=filter, step=step, **context)
        self.filter = filter
        self.step = step


class TrainingDataError(TrainingError):
    """Training inputs are unusable: shapes disagree, too few rows, scores out of 0-10, NaNs."""
