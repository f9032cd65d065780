"""The oracle client's errors: the public ones (all :class:`~training.exceptions.TrainingError`, step
``label``), and the two signals the providers give the labeller about one request."""

from __future__ import annotations

from typing import Any

from scoring.exceptions import SettingsError
from training.exceptions import TrainingError


class OracleError(TrainingError):
    """Root of the oracle client's errors; ``step`` is always ``label``."""

    def __init__(self, message: str, **context: Any) -> None:
        context.setdefault("step", "label")
        super().__init__(message, **context)


class OracleConfigError(OracleError, SettingsError):
    """Settings or environment cannot be used (unknown provider, missing API key, bad number)."""


class OracleAnswerError(OracleError):
    """The model's answer is not a valid score object; ``raw`` keeps the text that was judged."""

    def __init__(self, message: str, *, raw: str | None = None, article_id: str | None = None) -> None:
        super().__init__(message, article_id=article_id)
        self.raw = raw


class OracleRequestError(OracleError):
    """The API refused the run (401/403/404) or answered in a way no retry can fix."""

    def __init__(self, message: str, *, status: int | None = None, article_id: str | None = None,
                 provider: str | None = None) -> None:
        super().__init__(message, status=status, article_id=article_id, provider=provider)
        self.status = status


# Internal signals, never raised out of the labeller (not FluxscoreErrors, so nobody routes them).

class RetryableRequest(Exception):
    """This request failed in a way a later one may not (timeout, 429, 5xx). ``retry_after`` is the
    server's delay in seconds when it named one; :mod:`scoring.retry`'s wait honours it. ``reason`` is
    already scrubbed of the key. ``throttled`` (a 429) makes the wait apply to every worker."""

    def __init__(self, reason: str, retry_after: float | None = None, *, throttled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.throttled = throttled


class ArticleFailure(Exception):
    """This article cannot be labelled (e.g. a 400 or a blocked prompt); other articles can."""


__all__ = ["ArticleFailure", "OracleAnswerError", "OracleConfigError", "OracleError", "OracleRequestError",
           "RetryableRequest"]
