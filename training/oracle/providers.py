"""The providers: request and response code for an OpenAI-compatible chat-completions API and for
Google's Gemini ``generateContent``.

:meth:`Provider.send` makes one HTTP exchange and sorts its failures for the labeller: worth another
attempt (:class:`~training.oracle.errors.RetryableRequest`, with the server's ``Retry-After`` or
Gemini's ``retryDelay`` as ``retry_after``), fatal for this article only
(:class:`~training.oracle.errors.ArticleFailure`), an answer that is no reply
(:class:`~training.oracle.errors.OracleAnswerError`), or fatal for the run
(:class:`~training.oracle.errors.OracleRequestError`: 401/403/404). The API key travels in a header
only (Gemini's ``x-goog-api-key`` rather than ``?key=``, because httpx logs request URLs), and every
text taken from a response is scrubbed of it before it goes anywhere.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import orjson

from scoring.redact import Redactor
from training.oracle.errors import ArticleFailure, OracleAnswerError, OracleRequestError, RetryableRequest
from training.oracle.settings import OracleSettings

log = logging.getLogger(__name__)

# Transient by nature: rate limits, overload, gateway trouble.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
# The whole run is wrong (key, permissions, model name): every further request would fail the same way.
FATAL_STATUS = frozenset({401, 403, 404})


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


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


class Provider(ABC):
    """One API: where to post, what to send, how to read the answer. ``client`` is shared by the run
    (its timeout and connection limits come from the settings; tests hand in one over a mock transport)."""

    name: ClassVar[str]
    url: str                   # set by each provider
    headers: dict[str, str]    # the key's header

    def __init__(self, settings: OracleSettings, key: str, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        self.redactor = Redactor([key])

    @abstractmethod
    def body(self, system: str, user: str) -> dict[str, Any]: ...

    @abstractmethod
    def parse(self, data: Any) -> Reply: ...

    def unsupported_json_mode(self, status: int, text: str) -> bool:
        """Whether this refusal means "no JSON mode here" (then the next attempts ask without it)."""
        return False

    def retry_delay(self, response: httpx.Response) -> float | None:
        """The wait the server asked for with a retryable status, in seconds."""
        return parse_retry_after(response.headers)

    async def send(self, system: str, user: str) -> Reply:
        """One HTTP exchange; sorts failures into retryable, this-article-only, and fatal."""
        redact = self.redactor.text
        try:
            response = await self.client.post(self.url, headers=self.headers, json=self.body(system, user))
        except httpx.TimeoutException:
            raise RetryableRequest(f"timed out after {self.settings.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise RetryableRequest(f"transport error: {type(exc).__name__}: {redact(str(exc))}") from None
        status = response.status_code
        if status != 200:
            text = redact(response.text[:500])
            if status in RETRY_STATUS:
                raise RetryableRequest(f"HTTP {status}: {text}", self.retry_delay(response), throttled=status == 429)
            if status in FATAL_STATUS:
                raise OracleRequestError(f"{self.name} API answered HTTP {status}: {text}",
                                         status=status, provider=self.name)
            if self.unsupported_json_mode(status, response.text):
                log.warning("the server does not support response_format; asking without it")
                # Not the server's fault and nothing to wait for: the next attempt goes out at once.
                raise RetryableRequest(f"HTTP {status}: JSON mode unsupported, retrying without it", 0.0)
            raise ArticleFailure(f"HTTP {status}: {text}")
        try:
            data = response.json()
        except ValueError:
            raise OracleAnswerError("the API answer is not JSON", raw=redact(response.text[:2000])) from None
        return self.parse(data)


class OpenAIProvider(Provider):
    """An OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, gateways)."""

    name = "openai"

    def __init__(self, settings: OracleSettings, key: str, client: httpx.AsyncClient) -> None:
        super().__init__(settings, key, client)
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


class GeminiProvider(Provider):
    """Google's Gemini ``generateContent``; thinking parts are skipped but billed as output."""

    name = "gemini"

    def __init__(self, settings: OracleSettings, key: str, client: httpx.AsyncClient) -> None:
        super().__init__(settings, key, client)
        self.url = f"{settings.base_url}/v1beta/models/{settings.model}:generateContent"
        self.headers = {"x-goog-api-key": key}

    def retry_delay(self, response: httpx.Response) -> float | None:
        wait = super().retry_delay(response)
        if wait is None:
            try:
                wait = gemini_retry_delay(response.json())
            except ValueError:
                wait = None
        return wait

    def body(self, system: str, user: str) -> dict[str, Any]:
        config: dict[str, Any] = {"temperature": self.settings.temperature}
        if self.settings.json_mode:
            config["responseMimeType"] = "application/json"
        return {"systemInstruction": {"parts": [{"text": system}]},
                "contents": [{"role": "user", "parts": [{"text": user}]}],
                "generationConfig": config}

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
            raise ArticleFailure(f"prompt blocked by the provider: {block}")
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


def gemini_retry_delay(body: Any) -> float | None:
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


def make_provider(settings: OracleSettings, key: str, client: httpx.AsyncClient) -> Provider:
    """The provider the settings name."""
    cls: type[Provider] = OpenAIProvider if settings.provider == "openai" else GeminiProvider
    return cls(settings, key, client)


__all__ = ["FATAL_STATUS", "RETRY_STATUS", "GeminiProvider", "OpenAIProvider", "Provider", "Reply", "Usage",
           "gemini_retry_delay", "make_provider", "parse_retry_after"]
