"""The labeller: articles through the oracle at the configured concurrency and rate, each answer
validated, every outcome written at once, the run resumable and costed.

Each article is sent with its filter's prompt (``config.oracle_prompt``). An answer that is not a valid
score object, a timeout, a 429 or a 5xx costs an attempt; after ``max_attempts`` the article is written
to the rejects file with every raw answer — never turned into zeros. The retries follow the project's
one policy (:mod:`scoring.retry`): the server's ``Retry-After`` when it gives one, else jittered
exponential backoff, both capped at ``max_wait``; an invalid answer is asked again at once. A 429's wait
holds back every worker (:class:`RateLimiter`).

Labelled records are appended (and flushed) one per line, so a run that stops can be started again and
skips the ids already in the output (:func:`completed_ids`; rejected ids are tried again, and the rejects
file holds article records plus ``oracle_reject``, so it can itself be fed back in).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import httpx
import orjson
from aiolimiter import AsyncLimiter
from tenacity import RetryCallState
from tenacity.wait import wait_base

from scoring.article import Article, parse_article
from scoring.exceptions import ArticleValidationError, FluxscoreError, PackageError
from scoring.package import FilterPackage
from scoring.redact import Redactor, protect_logging, register_secret
from scoring.retry import policy_wait, retry_bounded
from scoring.text import article_text
from training.oracle.answers import parse_answer
from training.oracle.errors import ArticleFailure, OracleAnswerError, OracleError, RetryableRequest
from training.oracle.providers import Provider, Reply, Usage, make_provider
from training.oracle.settings import OracleSettings

log = logging.getLogger(__name__)

ARTICLE_PLACEHOLDER = "{article}"


# ------------------------------------------------------------------------------------------- records

@dataclass
class LabelSummary:
    labelled: int = 0
    rejected: int = 0
    skipped: int = 0
    retries: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EventKind = Literal["labelled", "rejected", "skipped", "retry"]


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """One thing that happened to one article; ``summary`` is a snapshot of the run so far."""

    kind: EventKind
    article_id: str
    attempt: int
    detail: str
    summary: LabelSummary


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def completed_ids(out_path: Path) -> set[str]:
    """Ids already labelled in ``out_path``; a torn last line (a crash mid-write) is cut off."""
    if not out_path.exists():
        return set()
    data = out_path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        log.warning("dropping an incomplete last line (%d bytes) from %s", len(data) - cut, out_path)
        with out_path.open("r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    ids: set[str] = set()
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("%s line %d is not JSON; ignored for resuming", out_path, number)
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            ids.add(record["id"])
    return ids


def read_articles(path: Path) -> Iterator[Article]:
    """Articles from a JSONL file; an invalid line raises with its line number."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield parse_article(line)
                except ArticleValidationError as exc:
                    raise exc.with_context(path=str(path), line=number) from None


def build_messages(package: FilterPackage, prompt: str, text: str) -> tuple[str, str]:
    """(system, user) messages. The prompt's ``{article}`` marks where the text goes; else it follows."""
    dims = "\n".join(f"- {d.name}: {d.description}" for d in package.config.dimensions)
    system = ("You are a careful annotator of news articles. Whatever format the instructions describe, "
              "answer with one JSON object whose keys include every dimension below, each mapped to a "
              'number from 0 to 10 (or to an object with a numeric "score" and an "evidence" string), '
              'plus a short "reasoning" string.\nDimensions:\n' + dims)
    if ARTICLE_PLACEHOLDER in prompt:
        user = prompt.replace(ARTICLE_PLACEHOLDER, text)
    else:
        user = f"{prompt.rstrip()}\n\n---\nARTICLE:\n{text}"
    return system, user


# ------------------------------------------------------------------------------------- rate limiting

class RateLimiter:
    """Requests start at least ``60/rpm`` seconds apart, all workers together: an aiolimiter leaky bucket
    of capacity one. Capacity one keeps every 60 s window at or under ``rpm`` (plus one), which is what
    providers count; a bucket of ``rpm`` would let that many out at once and break their per-minute
    limit. ``rpm=0``: no limit."""

    def __init__(self, rpm: float) -> None:
        self.interval = 60.0 / rpm if rpm > 0 else 0.0
        self._bucket = AsyncLimiter(1, self.interval) if self.interval else None
        self._resume_at = 0.0

    def pause_until(self, when: float) -> None:
        """No request starts before monotonic time ``when`` (a 429's Retry-After applies to all)."""
        self._resume_at = max(self._resume_at, when)

    async def acquire(self) -> None:
        # aiolimiter has no notion of a pause; the wait a throttled worker was given comes first.
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._bucket is not None:
            await self._bucket.acquire()


class _OracleWait(wait_base):
    """The policy's wait (the server's delay, else backoff; capped at ``max_wait``), except that an
    invalid answer is asked again at once: the server is fine, the model's answer was not. A 429's
    wait is also imposed on every worker through the limiter."""

    def __init__(self, settings: OracleSettings, limiter: RateLimiter) -> None:
        self.policy = policy_wait(settings.backoff, settings.max_wait)
        self.limiter = limiter

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, OracleAnswerError):
            return 0.0
        wait = float(self.policy(retry_state))
        if isinstance(exc, RetryableRequest) and exc.throttled:
            # tenacity (9) chooses the wait before it checks the attempt budget, so this also holds the
            # others back after an article's last attempt, as a 429 should.
            self.limiter.pause_until(time.monotonic() + wait)
        return wait


# ------------------------------------------------------------------------------------------ labeller

@dataclass
class Judged:
    """What the oracle made of one article, before anything is written: the scores, or the last failure."""

    scores: dict[str, float] | None
    reasoning: str | None
    usage: Usage
    attempts: int
    truncated: bool
    error: BaseException | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class _Labeller:
    """One package's prompt through the API. ``out``/``rejects`` are the batch command's files (None for
    the stream worker, which only judges); ``limiter`` is shared when several packages share one rate."""

    def __init__(self, package: FilterPackage, settings: OracleSettings, key: str, client: httpx.AsyncClient,
                 out: IO[bytes] | None, rejects: IO[bytes] | None, progress: Callable[[LabelEvent], None] | None,
                 *, limiter: RateLimiter | None = None) -> None:
        self.package = package
        self.settings = settings
        self.out = out
        self.rejects = rejects
        self.progress = progress
        self.summary = LabelSummary()
        self.limiter = limiter or RateLimiter(settings.rpm)
        self.wait = _OracleWait(settings, self.limiter)
        self.redactor = Redactor([key])
        self.api: Provider = make_provider(settings, key, client)
        prompt_file = package.file(package.config.oracle_prompt)
        try:
            self.prompt = prompt_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PackageError(f"cannot read the oracle prompt {prompt_file}: {exc.strerror}",
                               filter=package.ref, path=str(prompt_file)) from None
        self.prompt_hash = hashlib.sha256(self.prompt.encode()).hexdigest()[:16]
        self.dims = package.config.dimension_names

    def redact(self, text: str) -> str:
        return self.redactor.text(text)

    def reason(self, exc: BaseException) -> str:
        """What an attempt's failure is called in records, events and logs; scrubbed of the key."""
        if isinstance(exc, RetryableRequest):
            return exc.reason  # built from scrubbed text
        if isinstance(exc, OracleAnswerError):
            return self.redact(exc.message)
        return self.redact(str(exc))

    def emit(self, kind: EventKind, article_id: str, attempt: int, detail: str) -> None:
        if self.progress is not None:
            self.progress(LabelEvent(kind, self.redact(article_id), attempt, self.redact(detail),
                                     replace(self.summary)))

    def write(self, fh: IO[bytes] | None, record: dict[str, Any]) -> None:
        assert fh is not None, "this labeller judges only; it has no files to write"
        # The whole record is scrubbed, not chosen fields: the model's free text (reasoning,
        # evidence), the raw answers of a reject and the article itself may all quote the key.
        # One write + flush per record, with no await in between: records never interleave, and a
        # crash loses at most the line being written (cut off on resume).
        fh.write(orjson.dumps(self.redactor.value(record), default=str) + b"\n")
        fh.flush()

    async def request(self, system: str, user: str) -> Reply:
        """One HTTP exchange at the run's rate, counted (requests, tokens, cost)."""
        await self.limiter.acquire()
        self.summary.requests += 1
        reply = await self.api.send(system, user)
        self.summary.input_tokens += reply.usage.input_tokens
        self.summary.output_tokens += reply.usage.output_tokens
        self.summary.cost += self.settings.cost(reply.usage.input_tokens, reply.usage.output_tokens)
        return reply

    def oracle_block(self, usage: Usage, attempts: int, truncated: bool) -> dict[str, Any]:
        return {"filter": self.package.name, "filter_version": self.package.version,
                "model": self.settings.model, "provider": self.settings.provider,
                "prompt_hash": self.prompt_hash, "labelled_at": _now(), "truncated": truncated,
                "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                          "thinking_tokens": usage.thinking_tokens, "attempts": attempts,
                          "cost": self.settings.cost(usage.input_tokens, usage.output_tokens)}}

    async def judge(self, article_id: str, text: str) -> Judged:
        """Ask the oracle about one article's text, with the retries of the policy; raises only what ends
        the run (:class:`OracleRequestError`: 401/403/404)."""
        truncated = len(text) > self.settings.max_chars
        system, user = build_messages(self.package, self.prompt, text[: self.settings.max_chars])
        usage = Usage()
        history: list[dict[str, Any]] = []

        async def attempt() -> tuple[dict[str, float], str | None]:
            # One attempt: a request and its answer judged. Every failure is kept, with the raw answer
            # when there was one, and re-raised for the policy to retry, or not.
            nonlocal usage
            try:
                reply = await self.request(system, user)
                usage = usage + reply.usage
                return parse_answer(reply.text, self.dims)
            except (RetryableRequest, OracleAnswerError, ArticleFailure) as exc:
                entry: dict[str, Any] = {"attempt": len(history) + 1, "error": self.reason(exc)}
                if isinstance(exc, OracleAnswerError):
                    entry["raw"] = self.redact(exc.raw) if exc.raw is not None else None
                history.append(entry)
                raise

        def on_retry(exc: BaseException, attempt: int) -> None:
            self.summary.retries += 1
            self.emit("retry", article_id, attempt, self.reason(exc))

        try:
            scores, reasoning = await retry_bounded(
                attempt, retry_on=(RetryableRequest, OracleAnswerError), what=f"article {self.redact(article_id)}",
                max_attempts=self.settings.max_attempts, wait=self.wait, on_retry=on_retry, logger=log,
                describe=self.reason)
        except (RetryableRequest, OracleAnswerError, ArticleFailure) as exc:
            # Out of attempts, or a failure no retry can fix for this article (a 400, a blocked prompt).
            return Judged(None, None, usage, len(history), truncated, error=exc, history=history)
        return Judged(scores, reasoning, usage, len(history) + 1, truncated, history=history)

    async def label(self, article: Article) -> None:
        judged = await self.judge(article.id, article_text(article))
        usage, truncated, history = judged.usage, judged.truncated, judged.history
        if judged.scores is None:
            exc = judged.error
            assert exc is not None  # no scores: judge() kept the last failure
            reject = self.oracle_block(usage, len(history), truncated)
            reject.pop("labelled_at")
            reason = self.reason(exc)
            reject.update({"rejected_at": _now(), "reason": reason, "errors": history})
            # The reject record is still a valid article, so the rejects file can be fed back in as input.
            self.write(self.rejects, {**article.to_dict(), "oracle_reject": reject})
            self.summary.rejected += 1
            self.emit("rejected", article.id, len(history), reason)
            return
        oracle = self.oracle_block(usage, judged.attempts, truncated)
        oracle["scores"] = judged.scores
        oracle["reasoning"] = judged.reasoning
        self.write(self.out, {**article.to_dict(), "oracle": oracle})
        self.summary.labelled += 1
        self.emit("labelled", article.id, len(history) + 1, "")


async def label_articles(package: FilterPackage, articles: Iterable[Article], out_path: Path,
                         rejects_path: Path, settings: OracleSettings,
                         progress: Callable[[LabelEvent], None] | None = None, *,
                         env: Mapping[str, str] | None = None,
                         transport: httpx.AsyncBaseTransport | None = None) -> LabelSummary:
    """Label ``articles`` with the oracle, appending to ``out_path``; ids already there are skipped.

    ``transport`` replaces the network (tests pass an :class:`httpx.MockTransport`).

    Raises :class:`OracleConfigError` (no key), :class:`OracleRequestError` (the API refuses the run:
    401/403/404) — records written up to then stay, so the run can resume.
    """
    started = time.monotonic()
    key = settings.api_key(env).get_secret_value()
    # Whatever logging the caller set up: the key is scrubbed from log lines, and httpx/httpcore,
    # which print response headers (a redirect's Location may carry the key) at DEBUG, stay quiet.
    register_secret(key)
    protect_logging()
    out_path, rejects_path = Path(out_path), Path(rejects_path)
    for path in (out_path, rejects_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    done = completed_ids(out_path)
    seen: set[str] = set()
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    # Redirects are not followed (httpx's default): the key must go to the configured URL only.
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout), limits=limits,
                                 transport=transport) as client:
        with out_path.open("ab") as out, rejects_path.open("ab") as rejects:
            labeller = _Labeller(package, settings, key, client, out, rejects, progress)
            slots = asyncio.Semaphore(settings.concurrency)
            tasks: set[asyncio.Task[None]] = set()
            fatal: list[BaseException] = []

            async def run_one(article: Article) -> None:
                try:
                    await labeller.label(article)
                except FluxscoreError as exc:
                    fatal.append(exc.with_context(filter=package.ref))
                except Exception as exc:
                    fatal.append(exc)
                finally:
                    slots.release()

            try:
                # Input that fails to parse ends the loop through ``fatal``; requests in flight are paid
                # for, so they are awaited rather than cancelled. Only cancellation cancels them.
                for article in _guarded(articles, fatal):
                    if article.id in done or article.id in seen:
                        labeller.summary.skipped += 1
                        labeller.emit("skipped", article.id, 0, "already labelled" if article.id in done
                                      else "duplicate id in the input")
                        continue
                    seen.add(article.id)
                    await slots.acquire()
                    if fatal:
                        slots.release()
                        break
                    task = asyncio.create_task(run_one(article))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                labeller.summary.wall_seconds = time.monotonic() - started
            if fatal:
                raise _scrubbed(fatal[0], labeller.redactor)
            return labeller.summary


def _scrubbed(exc: BaseException, redactor: Redactor) -> BaseException:
    """``exc`` without the key: a FluxscoreError is scrubbed in place (message, args, context, every
    attribute); any other exception whose text holds the key becomes an :class:`OracleError`, since
    its attributes are unknown."""
    if isinstance(exc, FluxscoreError):
        for name, value in list(vars(exc).items()):
            setattr(exc, name, redactor.value(value))
        exc.args = tuple(redactor.value(list(exc.args)))
        return exc
    if redactor.contains(str(exc)) or redactor.contains(repr(exc.args)):
        return OracleError(redactor.text(f"{type(exc).__name__}: {exc}"))
    return exc


def _guarded(articles: Iterable[Article], fatal: list[BaseException]) -> Iterator[Article]:
    """Iterate the input, turning a failure to read it into a recorded fatal error."""
    iterator = iter(articles)
    while True:
        try:
            article = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            fatal.append(exc)
            return
        yield article


def label_file(package: FilterPackage, articles: Path | Iterable[Article], out_path: Path, rejects_path: Path,
               settings: OracleSettings, progress: Callable[[LabelEvent], None] | None = None, *,
               env: Mapping[str, str] | None = None,
               transport: httpx.AsyncBaseTransport | None = None) -> LabelSummary:
    """Synchronous :func:`label_articles`; ``articles`` may be a JSONL path."""
    source = read_articles(Path(articles)) if isinstance(articles, str | Path) else articles
    return asyncio.run(label_articles(package, source, out_path, rejects_path, settings, progress, env=env,
                                      transport=transport))


__all__ = ["ARTICLE_PLACEHOLDER", "EventKind", "LabelEvent", "LabelSummary", "RateLimiter", "build_messages",
           "completed_ids", "label_articles", "label_file", "read_articles"]
