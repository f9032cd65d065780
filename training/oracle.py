"""Oracle labelling: score articles with an LLM over HTTP, strictly validated, resumable, costed.

Each article is sent with its filter's prompt (``config.oracle_prompt``) to an OpenAI-compatible
chat-completions API or to Google's Gemini API. The answer must hold a JSON object with every dimension
scored 0-10; anything else is retried and finally written to a rejects file with the raw answer —
never turned into zeros. Labelled records are appended (and flushed) one per line, so a run that stops
can be started again and skips the ids already in the output (rejected ids are tried again; the
rejects file holds article records plus ``oracle_reject``, so it can itself be fed back in).

Process settings come from the environment (:meth:`OracleSettings.from_env`):

| variable | default | meaning |
|---|---|---|
| ``FLUXSCORE_ORACLE_PROVIDER`` | ``openai`` | ``openai`` (chat-completions compatible) or ``gemini`` |
| ``FLUXSCORE_ORACLE_BASE_URL`` | provider's API | ``https://api.openai.com/v1`` / Gemini's public host |
| ``FLUXSCORE_ORACLE_MODEL`` | ``gpt-4.1-mini`` / ``gemini-2.5-flash`` | model name sent to the API |
| ``FLUXSCORE_ORACLE_API_KEY_ENV`` | ``OPENAI_API_KEY`` / ``GEMINI_API_KEY`` | name of the variable holding the key |
| ``FLUXSCORE_ORACLE_CONCURRENCY`` | ``4`` | requests in flight at once |
| ``FLUXSCORE_ORACLE_RPM`` | ``60`` | requests per minute, all workers together; ``0`` = no limit |
| ``FLUXSCORE_ORACLE_MAX_ATTEMPTS`` | ``4`` | attempts per article (HTTP failures and invalid answers) |
| ``FLUXSCORE_ORACLE_TIMEOUT`` | ``60`` | seconds per request |
| ``FLUXSCORE_ORACLE_PRICE_INPUT`` | ``0`` | price per 1M input tokens (any currency) |
| ``FLUXSCORE_ORACLE_PRICE_OUTPUT`` | ``0`` | price per 1M output tokens (thinking tokens count as output) |
| ``FLUXSCORE_ORACLE_MAX_CHARS`` | ``12000`` | article text budget in characters |
| ``FLUXSCORE_ORACLE_TEMPERATURE`` | ``0`` | sampling temperature |
| ``FLUXSCORE_ORACLE_JSON_MODE`` | ``true`` | ask for JSON output (``response_format`` / ``responseMimeType``) |
| ``FLUXSCORE_ORACLE_BACKOFF`` | ``1`` | first retry delay in seconds; doubles per attempt, with jitter |
| ``FLUXSCORE_ORACLE_MAX_WAIT`` | ``60`` | longest single wait, ``Retry-After`` included |

The API key is read from the named variable when labelling starts; it is sent only in a header (Gemini's
``x-goog-api-key`` rather than ``?key=``, because httpx logs request URLs). It and its URL-encoded and
JSON-escaped forms are scrubbed (:mod:`scoring.redact`) from every string that leaves the process: each
labelled and rejected record whole, every progress event, the errors raised, and every log line that
passes a handler with :class:`~scoring.redact.SecretFilter` (labelling puts one on the root logger's
handlers, and keeps the HTTP libraries' loggers, whose DEBUG lines print headers, at WARNING).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import httpx
import orjson

from scoring.article import Article, parse_article
from scoring.exceptions import ArticleValidationError, FluxscoreError, PackageError
from scoring.package import FilterPackage
from scoring.redact import Redactor, protect_logging, register_secret
from scoring.text import article_text
from training.exceptions import TrainingError

log = logging.getLogger(__name__)

Provider = Literal["openai", "gemini"]

DEFAULTS: dict[str, dict[str, str]] = {
    "openai": {"base_url": "https://api.openai.com/v1", "model": "gpt-4.1-mini", "api_key_env": "OPENAI_API_KEY"},
    "gemini": {"base_url": "https://generativelanguage.googleapis.com", "model": "gemini-2.5-flash",
               "api_key_env": "GEMINI_API_KEY"},
}

# Transient by nature: rate limits, overload, gateway trouble.
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
# The whole run is wrong (key, permissions, model name): every further request would fail the same way.
_FATAL_STATUS = frozenset({401, 403, 404})
ARTICLE_PLACEHOLDER = "{article}"


# ---------------------------------------------------------------------------------------------- errors

class OracleError(TrainingError):
    """Root of the oracle client's errors; ``step`` is always ``label``."""

    def __init__(self, message: str, **context: Any) -> None:
        context.setdefault("step", "label")
        super().__init__(message, **context)


class OracleConfigError(OracleError):
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


# -------------------------------------------------------------------------------------------- settings

def _env_number(env: Mapping[str, str], name: str, default: float, *, minimum: float,
                integer: bool = False) -> Any:
    raw = env.get(name, "")
    if raw == "":
        return int(default) if integer else default
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise OracleConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise OracleConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise OracleConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class OracleSettings:
    """How to reach the oracle and how hard to push it. Empty strings take the provider's default."""

    provider: Provider = "openai"
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    concurrency: int = 4
    rpm: float = 60.0
    max_attempts: int = 4
    timeout: float = 60.0
    price_input_per_m: float = 0.0
    price_output_per_m: float = 0.0
    max_chars: int = 12_000
    temperature: float = 0.0
    json_mode: bool = True
    backoff: float = 1.0
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        if self.provider not in DEFAULTS:
            raise OracleConfigError(f"unknown oracle provider {self.provider!r} (known: openai, gemini)")
        for name in ("base_url", "model", "api_key_env"):
            if not getattr(self, name):
                object.__setattr__(self, name, DEFAULTS[self.provider][name])
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        checks = {"concurrency": self.concurrency >= 1, "rpm": self.rpm >= 0,
                  "max_attempts": self.max_attempts >= 1, "timeout": self.timeout > 0,
                  "price_input_per_m": self.price_input_per_m >= 0,
                  "price_output_per_m": self.price_output_per_m >= 0, "max_chars": self.max_chars >= 1,
                  "backoff": self.backoff >= 0, "max_wait": self.max_wait >= 0,
                  "temperature": self.temperature >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise OracleConfigError(f"invalid oracle settings: {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> OracleSettings:
        """Read ``FLUXSCORE_ORACLE_*``; keyword overrides (e.g. from the command line) win."""
        env = os.environ if env is None else env
        p = "FLUXSCORE_ORACLE_"
        values: dict[str, Any] = {
            "provider": env.get(p + "PROVIDER", "") or "openai",
            "base_url": env.get(p + "BASE_URL", ""),
            "model": env.get(p + "MODEL", ""),
            "api_key_env": env.get(p + "API_KEY_ENV", ""),
            "concurrency": _env_number(env, p + "CONCURRENCY", 4, minimum=1, integer=True),
            "rpm": _env_number(env, p + "RPM", 60.0, minimum=0),
            "max_attempts": _env_number(env, p + "MAX_ATTEMPTS", 4, minimum=1, integer=True),
            "timeout": _env_number(env, p + "TIMEOUT", 60.0, minimum=0.001),
            "price_input_per_m": _env_number(env, p + "PRICE_INPUT", 0.0, minimum=0),
            "price_output_per_m": _env_number(env, p + "PRICE_OUTPUT", 0.0, minimum=0),
            "max_chars": _env_number(env, p + "MAX_CHARS", 12_000, minimum=1, integer=True),
            "temperature": _env_number(env, p + "TEMPERATURE", 0.0, minimum=0),
            "json_mode": _env_bool(env, p + "JSON_MODE", True),
            "backoff": _env_number(env, p + "BACKOFF", 1.0, minimum=0),
            "max_wait": _env_number(env, p + "MAX_WAIT", 60.0, minimum=0),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def api_key(self, env: Mapping[str, str] | None = None) -> str:
        env = os.environ if env is None else env
        key = env.get(self.api_key_env, "").strip()
        if not key:
            raise OracleConfigError(f"no API key: set the environment variable {self.api_key_env}",
                                    provider=self.provider)
        return key

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.price_input_per_m + output_tokens * self.price_output_per_m) / 1e6


# ------------------------------------------------------------------------------------ answer parsing

def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the ``}`` closing the ``{`` at ``start``; braces inside JSON strings ignored."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def extract_json(text: str) -> dict[str, Any]:
    """The first balanced top-level JSON object in ``text`` (fences and prose around it are ignored).

    A balanced ``{...}`` that does not parse (prose such as ``{see below}``) is skipped whole, never
    searched inside, so a broken answer cannot yield one of its own nested objects.
    """
    pos = 0
    problems: list[str] = []
    while (start := text.find("{", pos)) != -1:
        end = _balanced_end(text, start)
        if end is None:
            problems.append(f"unterminated object at character {start}")
            break
        candidate = text[start:end]
        try:
            value = json.loads(candidate, parse_constant=_reject_constant)
        except ValueError as exc:
            problems.append(f"invalid JSON at character {start}: {exc}")
            pos = end
            continue
        if isinstance(value, dict):
            return value
        pos = end
    detail = "; ".join(problems[:3]) if problems else "no '{' in the answer"
    raise OracleAnswerError(f"no JSON object in the answer ({detail})", raw=text)


def _number(value: Any) -> float | None:
    # bool is an int in Python; "true" is not a score.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def validate_scores(obj: Mapping[str, Any], dimensions: Iterable[str]) -> tuple[dict[str, float], str | None]:
    """Scores for every dimension (0-10, numeric) and the reasoning text, or :class:`OracleAnswerError`.

    Accepts ``{"dim": 7}``, ``{"dim": {"score": 7, "evidence": "..."}}``, and either form nested under
    ``"scores"`` or ``"dimensions"``. Dimensions the filter does not know are ignored.
    """
    dims = list(dimensions)
    source: Mapping[str, Any] = obj
    for nest in ("scores", "dimensions"):
        inner = obj.get(nest)
        if isinstance(inner, dict) and not any(d in obj for d in dims):
            source = inner
            break
    scores: dict[str, float] = {}
    evidence: dict[str, str] = {}
    problems: list[str] = []
    for dim in dims:
        if dim not in source:
            problems.append(f"{dim}: missing")
            continue
        entry = source[dim]
        if isinstance(entry, dict):
            if isinstance(entry.get("evidence"), str):
                evidence[dim] = entry["evidence"]
            if "score" not in entry:
                problems.append(f"{dim}: object without 'score'")
                continue
            entry = entry["score"]
        value = _number(entry)
        if value is None:
            problems.append(f"{dim}: not a number ({entry!r:.40})")
        elif not math.isfinite(value) or not 0.0 <= value <= 10.0:
            problems.append(f"{dim}: {value} outside 0-10")
        else:
            scores[dim] = value
    if problems:
        raise OracleAnswerError("invalid scores: " + "; ".join(problems))
    reasoning = obj.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        reasoning = "\n".join(f"{d}: {e}" for d, e in evidence.items()) or None
    return scores, reasoning


def parse_answer(text: str, dimensions: Iterable[str]) -> tuple[dict[str, float], str | None]:
    """:func:`extract_json` then :func:`validate_scores`; errors keep the raw text."""
    try:
        return validate_scores(extract_json(text), dimensions)
    except OracleAnswerError as exc:
        exc.raw = text
        raise


# ------------------------------------------------------------------------------------- rate limiting

class RateLimiter:
    """Token bucket of capacity one: requests start at least ``60/rpm`` seconds apart, all workers
    together. Capacity one keeps every 60 s window at or under ``rpm`` (plus one), which is what
    providers count; a larger bucket would let bursts break their per-minute limit."""

    def __init__(self, rpm: float) -> None:
        self.interval = 60.0 / rpm if rpm > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    def pause_until(self, when: float) -> None:
        """No request starts before monotonic time ``when`` (a 429's Retry-After applies to all)."""
        self._next = max(self._next, when)

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _gemini_retry_delay(body: Any) -> float | None:
    """Gemini puts the wait in ``error.details[RetryInfo].retryDelay`` (e.g. ``"17s"``)."""
    try:
        details = body["error"]["details"]
    except (KeyError, TypeError):
        return None
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = re.fullmatch(r"\s*([0-9.]+)s\s*", str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


# ----------------------------------------------------------------------------------------- providers

@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.thinking_tokens + other.thinking_tokens)


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    usage: Usage


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None, *, throttled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait
        self.throttled = throttled


class _ArticleFailure(Exception):
    """This article cannot be labelled (e.g. a 400 or a blocked prompt); other articles can."""


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


class _OpenAI:
    name = "openai"

    def __init__(self, settings: OracleSettings, key: str) -> None:
        self.settings = settings
        self.url = f"{settings.base_url}/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.json_mode = settings.json_mode

    def body(self, system: str, user: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model, "temperature": self.settings.temperature,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def unsupported_json_mode(self, status: int, text: str) -> bool:
        """Some compatible servers reject ``response_format``; then ask without it for the rest of the run."""
        if self.json_mode and status in (400, 422) and "response_format" in text:
            self.json_mode = False
            return True
        return False

    def parse(self, data: Any) -> Reply:
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise OracleAnswerError("answer has no choices[0].message", raw=_clip(data)) from None
        content = message.get("content") if isinstance(message, dict) else None
        usage = data.get("usage") or {}
        reply_usage = Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
                            _int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens")))
        if not isinstance(content, str) or not content.strip():
            refusal = message.get("refusal") if isinstance(message, dict) else None
            raise OracleAnswerError(f"empty answer{f' (refusal: {refusal})' if refusal else ''}",
                                    raw=_clip(data))
        return Reply(content, reply_usage)


class _Gemini:
    name = "gemini"

    def __init__(self, settings: OracleSettings, key: str) -> None:
        self.settings = settings
        self.url = f"{settings.base_url}/v1beta/models/{settings.model}:generateContent"
        self.headers = {"x-goog-api-key": key}

    def body(self, system: str, user: str) -> dict[str, Any]:
        config: dict[str, Any] = {"temperature": self.settings.temperature}
        if self.settings.json_mode:
            config["responseMimeType"] = "application/json"
        return {"systemInstruction": {"parts": [{"text": system}]},
                "contents": [{"role": "user", "parts": [{"text": user}]}],
                "generationConfig": config}

    def unsupported_json_mode(self, status: int, text: str) -> bool:
        return False

    def parse(self, data: Any) -> Reply:
        if not isinstance(data, dict):
            raise OracleAnswerError("answer is not a JSON object", raw=_clip(data))
        meta = data.get("usageMetadata") or {}
        thinking = _int(meta.get("thoughtsTokenCount"))
        # Gemini bills thinking tokens as output; leaving them out would undercount the cost.
        usage = Usage(_int(meta.get("promptTokenCount")), _int(meta.get("candidatesTokenCount")) + thinking,
                      thinking)
        block = (data.get("promptFeedback") or {}).get("blockReason")
        if block:
            raise _ArticleFailure(f"prompt blocked by the provider: {block}")
        candidates = data.get("candidates") or []
        parts = ((candidates[0] or {}).get("content") or {}).get("parts") or [] if candidates else []
        text = "".join(p["text"] for p in parts
                       if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought"))
        if not text.strip():
            reason = (candidates[0] or {}).get("finishReason") if candidates else None
            raise OracleAnswerError(f"empty answer (finishReason: {reason})", raw=_clip(data))
        return Reply(text, usage)


def _clip(data: Any, limit: int = 2000) -> str:
    text = data if isinstance(data, str) else orjson.dumps(data, default=str).decode()
    return text if len(text) <= limit else text[:limit] + "…"


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


# ------------------------------------------------------------------------------------------ labeller

class _Labeller:
    def __init__(self, package: FilterPackage, settings: OracleSettings, key: str, client: httpx.AsyncClient,
                 out: IO[bytes], rejects: IO[bytes], progress: Callable[[LabelEvent], None] | None) -> None:
        self.package = package
        self.settings = settings
        self.key = key
        self.client = client
        self.out = out
        self.rejects = rejects
        self.progress = progress
        self.summary = LabelSummary()
        self.limiter = RateLimiter(settings.rpm)
        self.redactor = Redactor([key])
        self.api: _OpenAI | _Gemini = (_OpenAI if settings.provider == "openai" else _Gemini)(settings, key)
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

    def emit(self, kind: EventKind, article_id: str, attempt: int, detail: str) -> None:
        if self.progress is not None:
            self.progress(LabelEvent(kind, self.redact(article_id), attempt, self.redact(detail),
                                     replace(self.summary)))

    def write(self, fh: IO[bytes], record: dict[str, Any]) -> None:
        # The whole record is scrubbed, not chosen fields: the model's free text (reasoning,
        # evidence), the raw answers of a reject and the article itself may all quote the key.
        # One write + flush per record, with no await in between: records never interleave, and a
        # crash loses at most the line being written (cut off on resume).
        fh.write(orjson.dumps(self.redactor.value(record), default=str) + b"\n")
        fh.flush()

    def backoff(self, attempt: int) -> float:
        base = min(self.settings.max_wait, self.settings.backoff * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)

    async def request(self, system: str, user: str) -> Reply:
        """One HTTP exchange; sorts failures into retryable, this-article-only, and fatal."""
        await self.limiter.acquire()
        self.summary.requests += 1
        try:
            response = await self.client.post(self.api.url, headers=self.api.headers,
                                              json=self.api.body(system, user))
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self.settings.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"transport error: {type(exc).__name__}: {self.redact(str(exc))}") from None
        status = response.status_code
        if status != 200:
            text = self.redact(response.text[:500])
            if status in _RETRY_STATUS:
                wait = parse_retry_after(response.headers)
                if wait is None and self.api.name == "gemini":
                    try:
                        wait = _gemini_retry_delay(response.json())
                    except ValueError:
                        wait = None
                raise _Retryable(f"HTTP {status}: {text}", wait, throttled=status == 429)
            if status in _FATAL_STATUS:
                raise OracleRequestError(f"{self.api.name} API answered HTTP {status}: {text}",
                                         status=status, provider=self.api.name)
            if self.api.unsupported_json_mode(status, response.text):
                log.warning("the server does not support response_format; asking without it")
                raise _Retryable(f"HTTP {status}: JSON mode unsupported, retrying without it", 0.0)
            raise _ArticleFailure(f"HTTP {status}: {text}")
        try:
            data = response.json()
        except ValueError:
            raise OracleAnswerError("the API answer is not JSON", raw=self.redact(response.text[:2000])) from None
        reply = self.api.parse(data)
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

    async def label(self, article: Article) -> None:
        text = article_text(article)
        truncated = len(text) > self.settings.max_chars
        system, user = build_messages(self.package, self.prompt, text[: self.settings.max_chars])
        usage = Usage()
        history: list[dict[str, Any]] = []
        reason = "no attempt made"
        attempt = 0
        while attempt < self.settings.max_attempts:
            attempt += 1
            try:
                reply = await self.request(system, user)
                usage = usage + reply.usage
                scores, reasoning = parse_answer(reply.text, self.dims)
            except _Retryable as exc:
                reason = exc.reason
                history.append({"attempt": attempt, "error": reason})
                wait = min(self.settings.max_wait, exc.wait) if exc.wait is not None else self.backoff(attempt)
                if exc.throttled:
                    self.limiter.pause_until(time.monotonic() + wait)
                if attempt < self.settings.max_attempts:
                    self.summary.retries += 1
                    log.info("article %s attempt %d: %s; retrying in %.2f s", article.id, attempt, reason, wait)
                    self.emit("retry", article.id, attempt, reason)
                    await asyncio.sleep(wait)
                continue
            except OracleAnswerError as exc:
                reason = self.redact(exc.message)
                history.append({"attempt": attempt, "error": reason,
                                "raw": self.redact(exc.raw) if exc.raw is not None else None})
                if attempt < self.settings.max_attempts:
                    self.summary.retries += 1
                    self.emit("retry", article.id, attempt, reason)
                continue
            except _ArticleFailure as exc:
                reason = self.redact(str(exc))
                history.append({"attempt": attempt, "error": reason})
                break
            oracle = self.oracle_block(usage, attempt, truncated)
            oracle["scores"] = scores
            oracle["reasoning"] = reasoning
            self.write(self.out, {**article.to_dict(), "oracle": oracle})
            self.summary.labelled += 1
            self.emit("labelled", article.id, attempt, "")
            return
        reject = self.oracle_block(usage, attempt, truncated)
        reject.pop("labelled_at")
        reject.update({"rejected_at": _now(), "reason": reason, "errors": history})
        # The reject record is still a valid article, so the rejects file can be fed back in as input.
        self.write(self.rejects, {**article.to_dict(), "oracle_reject": reject})
        self.summary.rejected += 1
        self.emit("rejected", article.id, attempt, reason)


async def label_articles(package: FilterPackage, articles: Iterable[Article], out_path: Path,
                         rejects_path: Path, settings: OracleSettings,
                         progress: Callable[[LabelEvent], None] | None = None, *,
                         env: Mapping[str, str] | None = None) -> LabelSummary:
    """Label ``articles`` with the oracle, appending to ``out_path``; ids already there are skipped.

    Raises :class:`OracleConfigError` (no key), :class:`OracleRequestError` (the API refuses the run:
    401/403/404) — records written up to then stay, so the run can resume.
    """
    started = time.monotonic()
    key = settings.api_key(env)
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
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout), limits=limits) as client:
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
               env: Mapping[str, str] | None = None) -> LabelSummary:
    """Synchronous :func:`label_articles`; ``articles`` may be a JSONL path."""
    source = read_articles(Path(articles)) if isinstance(articles, str | Path) else articles
    return asyncio.run(label_articles(package, source, out_path, rejects_path, settings, progress, env=env))


__all__ = ["LabelEvent", "LabelSummary", "OracleAnswerError", "OracleConfigError", "OracleError",
           "OracleRequestError", "OracleSettings", "RateLimiter", "Usage", "build_messages", "completed_ids",
           "extract_json", "label_articles", "label_file", "parse_answer", "parse_retry_after", "read_articles",
           "validate_scores"]
