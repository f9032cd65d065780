"""The oracle one item at a time, for the ``oracle`` stream role: :meth:`Oracle.label_one`.

The batch command (:func:`~training.oracle.labeller.label_articles`) labels a file and writes each outcome
to a file as it comes. A stream worker needs the outcome of one queue item in hand instead, because it
must store the label durably before it acknowledges the item. :class:`Oracle` runs the same labeller
(prompt, request and answer code, retries, validation, accounting) and shares one HTTP client, one rate
limiter and one concurrency limit across every package it serves. Each item ends as one of:

- a :class:`~training.labels.Label` with its provenance (oracle model, prompt hash, time, tokens, cost);
- an :class:`OracleRejection`: the answers stayed invalid for every attempt (malformed JSON, a missing or
  out-of-range score) or the provider refused this article (a 400, a blocked prompt) — with the reason and
  every attempt's error;
- :class:`OracleUnavailableError`, raised: the attempts all failed for the server's reasons (timeouts, 429,
  5xx, the network). That says nothing about the item, so a worker waits and asks again rather than
  reject it (the error carries the server's ``Retry-After`` when it gave one).

:class:`~training.oracle.errors.OracleRequestError` (401/403/404: key, permissions, model name) is raised
as it is: every further request would fail the same way.

The API key is scrubbed from every string of a label or rejection, as the batch command scrubs its records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field

from scoring.article import Article
from scoring.package import FilterPackage
from scoring.redact import Redactor, protect_logging, register_secret
from scoring.text import article_text
from training.labels import Label
from training.oracle.errors import OracleError, RetryableRequest
from training.oracle.labeller import Judged, RateLimiter, _Labeller
from training.oracle.settings import OracleSettings


class OracleUnavailableError(OracleError):
    """Every attempt at one item failed for the server's reasons (timeouts, 429, 5xx): wait and ask again.

    ``retry_after`` is the delay (seconds) the server asked for with its last answer, when it named one;
    :mod:`scoring.retry`'s wait honours it."""

    def __init__(self, message: str, *, retry_after: float | None = None, article_id: str | None = None) -> None:
        super().__init__(message, article_id=article_id)
        self.retry_after = retry_after


class OracleRejection(BaseModel):
    """An item the oracle could not label, and why: the record that ends it when no label will come."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    article_id: str
    filter: str
    status: Literal["rejected"] = "rejected"
    reason: str = Field(description="the last attempt's failure, e.g. 'invalid scores: alpha: 11.0 outside 0-10'")
    errors: list[dict[str, Any]] = Field(default_factory=list, description="every attempt's error (and raw answer)")
    attempts: int = Field(ge=0)
    annotator: str = Field(description="the oracle model asked")
    provider: str
    prompt_hash: str
    package_version: str
    tokens: int = Field(0, ge=0)
    cost: float = Field(0.0, ge=0.0)
    rejected_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


class Oracle:
    """One oracle client for a long-running process; use as ``async with Oracle(settings) as oracle``.

    ``transport`` replaces the network (tests pass the fake's :class:`httpx.MockTransport`); ``env`` is
    where the API key variable is read (default: the process environment).
    """

    def __init__(self, settings: OracleSettings, *, env: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        key = settings.api_key(env).get_secret_value()
        register_secret(key)
        protect_logging()
        self._key = key
        self.redactor = Redactor([key])
        self.limiter = RateLimiter(settings.rpm)
        limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
        # Redirects are not followed (httpx's default): the key must go to the configured URL only.
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout), limits=limits, transport=transport)
        self._labellers: dict[Path, _Labeller] = {}
        # Items in flight at once, all packages together; a request waiting in httpx's pool instead would
        # count its wait against the request timeout and look like an outage.
        self._slots = asyncio.Semaphore(settings.concurrency)

    async def __aenter__(self) -> Oracle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()

    def _labeller(self, package: FilterPackage) -> _Labeller:
        labeller = self._labellers.get(package.path)
        if labeller is None:
            # No files: the worker stores what it gets. One limiter for all: the rate is the account's.
            labeller = _Labeller(package, self.settings, self._key, self.client, None, None, None,
                                 limiter=self.limiter)
            self._labellers[package.path] = labeller
        return labeller

    def prompt_hash(self, package: FilterPackage) -> str:
        """The hash recorded with ``package``'s labels: sha256 of its oracle prompt (16 hex digits)."""
        return self._labeller(package).prompt_hash

    def rejection(self, package: FilterPackage, article_id: str, reason: str) -> OracleRejection:
        """A rejection made by the caller (e.g. it stopped waiting for an unavailable oracle)."""
        return OracleRejection.model_validate(self.redactor.value({
            "article_id": article_id, "filter": package.name, "reason": reason, "attempts": 0,
            "annotator": self.settings.model, "provider": self.settings.provider,
            "prompt_hash": self.prompt_hash(package), "package_version": package.version}))

    async def label_one(self, package: FilterPackage, article: Article) -> Label | OracleRejection:
        """Label ``article`` for ``package``: a label, a rejection, or :class:`OracleUnavailableError`."""
        return await self.label_text(package, article.id, article_text(article), title=article.title)

    async def label_text(self, package: FilterPackage, article_id: str, text: str, *,
                         title: str = "") -> Label | OracleRejection:
        """:meth:`label_one` for a text already prepared as the models read it (title + cleaned content)."""
        labeller = self._labeller(package)
        async with self._slots:
            judged = await labeller.judge(article_id, text)
        return self._outcome(package, labeller, judged, article_id, text, title)

    def _outcome(self, package: FilterPackage, labeller: _Labeller, judged: Judged, article_id: str, text: str,
                 title: str) -> Label | OracleRejection:
        usage = judged.usage
        tokens = usage.input_tokens + usage.output_tokens
        cost = self.settings.cost(usage.input_tokens, usage.output_tokens)
        scrub = self.redactor.value
        if judged.scores is not None:
            note = f"text cut to {self.settings.max_chars} characters for the oracle" if judged.truncated else None
            return Label.model_validate(scrub({
                "article_id": article_id, "filter": package.name, "source": "oracle",
                "annotator": self.settings.model, "scores": judged.scores, "text": text, "title": title,
                "note": note, "reasoning": judged.reasoning, "prompt_hash": labeller.prompt_hash, "tokens": tokens,
                "cost": cost, "package_version": package.version}))
        exc = judged.error
        assert exc is not None  # no scores: the labeller kept the last failure
        reason = labeller.reason(exc)
        if isinstance(exc, RetryableRequest):
            raise OracleUnavailableError(
                f"the oracle is unavailable: {reason} (after {judged.attempts} attempt(s))",
                retry_after=exc.retry_after, article_id=self.redactor.text(article_id))
        return OracleRejection.model_validate(scrub({
            "article_id": article_id, "filter": package.name, "reason": reason, "errors": judged.history,
            "attempts": judged.attempts, "annotator": self.settings.model, "provider": self.settings.provider,
            "prompt_hash": labeller.prompt_hash, "package_version": package.version, "tokens": tokens,
            "cost": cost}))


__all__ = ["Oracle", "OracleRejection", "OracleUnavailableError"]
