"""The providers' request and response code, against httpx.MockTransport (no socket needed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from tests.training.oracle.common import KEY, KEY_ENV
from training.oracle import OracleAnswerError, OracleRequestError, OracleSettings, Usage, parse_retry_after
from training.oracle.errors import ArticleFailure, RetryableRequest
from training.oracle.providers import GeminiProvider, OpenAIProvider, Provider, Reply, gemini_retry_delay, make_provider

BASE = "http://oracle.test"
Handler = Callable[[httpx.Request], httpx.Response]


def make(provider: str, handler: Handler, **kw: Any) -> Provider:
    values: dict[str, Any] = {"provider": provider, "base_url": BASE + ("/v1" if provider == "openai" else ""),
                              "model": "toy-model", "api_key_env": KEY_ENV, "timeout": 2.0}
    values.update(kw)
    return make_provider(OracleSettings(**values), KEY, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def send(api: Provider, system: str = "SYS", user: str = "USER") -> Reply:
    async def run() -> Reply:
        async with api.client:
            return await api.send(system, user)
    return asyncio.run(run())


def failure(api: Provider) -> BaseException:
    """What :meth:`Provider.send` raised (the tests then check its kind)."""
    try:
        send(api)
    except Exception as exc:
        return exc
    raise AssertionError("the exchange succeeded")


def openai_answer(content: Any, **usage: int) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, **usage}}


GEMINI_ANSWER = {"candidates": [{"content": {"parts": [{"text": "thinking {aloud}", "thought": True},
                                                       {"text": '{"alpha": 1}'}]}}],
                 "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 7, "thoughtsTokenCount": 3}}


# ---------------------------------------------------------------------------------- request shapes

def test_openai_request_shape_and_reply() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=openai_answer("ANSWER", completion_tokens_details={"reasoning_tokens": 2}))

    api = make("openai", handler, temperature=0.2)
    assert isinstance(api, OpenAIProvider)
    assert send(api) == Reply("ANSWER", Usage(11, 7, 2))
    (request,) = seen
    assert str(request.url) == f"{BASE}/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {
        "model": "toy-model", "temperature": 0.2, "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "SYS"}, {"role": "user", "content": "USER"}]}


@pytest.mark.parametrize("json_mode", [True, False])
def test_gemini_request_shape_key_in_header_and_thinking_billed_as_output(json_mode: bool) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=GEMINI_ANSWER)

    api = make("gemini", handler, json_mode=json_mode)
    assert isinstance(api, GeminiProvider)
    assert send(api) == Reply('{"alpha": 1}', Usage(11, 7 + 3, 3))  # the thought part is not the answer
    (request,) = seen
    assert request.url.path == "/v1beta/models/toy-model:generateContent"
    assert request.url.query == b""  # never ?key=: httpx logs URLs
    assert request.headers["x-goog-api-key"] == KEY
    body = json.loads(request.content)
    assert body["systemInstruction"] == {"parts": [{"text": "SYS"}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "USER"}]}]
    assert ("responseMimeType" in body["generationConfig"]) is json_mode


# ------------------------------------------------------------------------------ sorting failures

@pytest.mark.parametrize(("status", "headers", "wait", "throttled"), [
    (429, {"Retry-After": "3"}, 3.0, True),
    (503, {"retry-after-ms": "250"}, 0.25, False),
    (500, {}, None, False),
    (529, {"Retry-After": "soon"}, None, False),
])
def test_transient_statuses_are_retryable_and_carry_the_servers_delay(status: int, headers: dict[str, str],
                                                                      wait: float | None, throttled: bool) -> None:
    api = make("openai", lambda r: httpx.Response(status, headers=headers, json={"error": {"message": "busy"}}))
    exc = failure(api)
    assert isinstance(exc, RetryableRequest)
    assert (exc.retry_after, exc.throttled) == (wait, throttled)
    assert exc.reason.startswith(f"HTTP {status}: ") and "busy" in exc.reason


def test_gemini_retry_delay_from_the_body_when_no_header() -> None:
    body = {"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.Help"},
                                               {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                "retryDelay": "17s"}]}}
    exc = failure(make("gemini", lambda r: httpx.Response(429, json=body)))
    assert isinstance(exc, RetryableRequest) and exc.retry_after == 17.0
    # The header wins over the body.
    exc = failure(make("gemini", lambda r: httpx.Response(429, headers={"Retry-After": "2"}, json=body)))
    assert isinstance(exc, RetryableRequest) and exc.retry_after == 2.0
    assert gemini_retry_delay({"error": {"details": "nope"}}) is None
    assert gemini_retry_delay("not a dict") is None


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refusals_of_the_run_are_fatal_and_scrubbed(status: int) -> None:
    api = make("gemini", lambda r: httpx.Response(status, json={"error": {"message": f"key {KEY} refused"}}))
    exc = failure(api)
    assert isinstance(exc, OracleRequestError) and exc.status == status
    assert KEY not in str(exc) and "***" in str(exc)


def test_a_bad_request_fails_this_article_only() -> None:
    exc = failure(make("openai", lambda r: httpx.Response(400, json={"error": {"message": "too long"}})))
    assert isinstance(exc, ArticleFailure) and "HTTP 400" in str(exc)


def test_json_mode_unsupported_is_retried_at_once_without_it() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if "response_format" in bodies[-1]:
            return httpx.Response(400, json={"error": {"message": "response_format is not supported"}})
        return httpx.Response(200, json=openai_answer("OK"))

    api = make("openai", handler)

    async def run() -> tuple[BaseException, Reply]:
        async with api.client:
            with pytest.raises(RetryableRequest) as info:
                await api.send("s", "u")
            return info.value, await api.send("s", "u")

    exc, reply = asyncio.run(run())
    assert isinstance(exc, RetryableRequest) and exc.retry_after == 0.0
    assert reply.text == "OK"
    assert ["response_format" in b for b in bodies] == [True, False]


@pytest.mark.parametrize(("provider", "payload", "problem"), [
    ("openai", {"choices": []}, "no choices"),
    ("openai", openai_answer(""), "empty answer"),
    ("openai", {"choices": [{"message": {"content": None, "refusal": "no"}}]}, "refusal: no"),
    ("gemini", {"candidates": [{"finishReason": "MAX_TOKENS", "content": {"parts": []}}]}, "MAX_TOKENS"),
    ("gemini", ["not", "an", "object"], "not a JSON object"),
])
def test_answers_without_text_are_answer_errors(provider: str, payload: Any, problem: str) -> None:
    exc = failure(make(provider, lambda r: httpx.Response(200, json=payload)))
    assert isinstance(exc, OracleAnswerError) and problem in exc.message and exc.raw


def test_a_body_that_is_not_json_is_an_answer_error_with_its_text_scrubbed() -> None:
    exc = failure(make("openai", lambda r: httpx.Response(200, text=f"<html>proxy error {KEY}</html>")))
    assert isinstance(exc, OracleAnswerError) and "not JSON" in exc.message
    assert exc.raw is not None and KEY not in exc.raw and "proxy error ***" in exc.raw


def test_a_blocked_gemini_prompt_fails_this_article_only() -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}}
    exc = failure(make("gemini", lambda r: httpx.Response(200, json=body)))
    assert isinstance(exc, ArticleFailure) and "SAFETY" in str(exc)


def test_timeouts_and_transport_errors_are_retryable_and_scrubbed() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach proxy for {KEY}", request=request)

    exc = failure(make("openai", timeout))
    assert isinstance(exc, RetryableRequest) and exc.reason == "timed out after 2 s" and exc.retry_after is None
    exc = failure(make("openai", refused))
    assert isinstance(exc, RetryableRequest)
    assert exc.reason == "transport error: ConnectError: cannot reach proxy for ***"


# ------------------------------------------------------------------------------------- Retry-After

def test_parse_retry_after_seconds_date_and_ms() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": format_datetime(now + timedelta(seconds=7), usegmt=True)},
                             now=now) == pytest.approx(7.0)
    assert parse_retry_after({"retry-after": format_datetime(now - timedelta(seconds=7), usegmt=True)},
                             now=now) == 0.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after({}) is None
