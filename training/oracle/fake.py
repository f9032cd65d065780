"""A fake of the OpenAI chat-completions and Gemini generateContent APIs, for testing the oracle client
and for demonstrating it without a real LLM, served two ways: :class:`OracleServer`, a small real HTTP
server on 127.0.0.1 (for what needs real sockets: timeouts, redirects, httpcore's own logging,
concurrency on the wire, and other processes such as the ``oracle`` stream role in ``fluxscore demo``),
and :class:`MockOracle`, an :class:`httpx.MockTransport` for the client to use instead of the network.

What it answers is chosen by a marker in the article text, ``case:<name> key:<id>``; ``key`` counts
calls so that cases like "fail once, then succeed" work per article. Every request is recorded with
its headers, body, and start/end times, and the highest number of requests in flight is tracked.

By default a good answer scores the test dimensions ``alpha`` and ``beta``. With
``dimensions_from_prompt=True`` the answers score the dimensions the system message lists (as
:func:`training.oracle.labeller.build_messages` writes them), so any filter package can be labelled:
scores are derived from a hash of the article text, stable across calls. A generation request (its
system message carries :data:`~training.oracle.generate.GENERATION_MARKER`) is answered with an article
JSON ``{"title", "content"}`` derived from the request (:func:`generated_article`). It binds loopback only and
checks the API key like a real provider; it is a test double, not a model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from training.oracle.errors import OracleError
from training.oracle.generate import GENERATION_MARKER, SOURCE_DELIMITER

MARKER = re.compile(r"case:(\S+) key:(\S+)")
GEMINI_PATH = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")
USAGE_IN, USAGE_OUT, USAGE_THINKING = 100, 20, 5

GOOD: dict[str, Any] = {"alpha": {"score": 7, "evidence": "says so"}, "beta": 3.5, "reasoning": "solid"}
GOOD_TEXT = json.dumps(GOOD)
# The dimension lines of the oracle's system message: "- name: description".
DIMENSION_LINE = re.compile(r"^- ([a-z][a-z0-9_]*): ", re.MULTILINE)


class FakeOracleError(OracleError):
    """A request the fake has no answer for (an unknown ``case:`` marker): a mistake in the test."""


def prompt_dimensions(system: str) -> list[str]:
    """The dimension names a system message lists after ``Dimensions:``."""
    _, found, tail = system.partition("Dimensions:")
    return DIMENSION_LINE.findall(tail) if found else []


def hashed_scores(dimensions: list[str], text: str) -> dict[str, float]:
    """Scores 2.0-9.5 per dimension, a function of the text alone (the same article, the same answer)."""
    out = {}
    for name in dimensions:
        digest = hashlib.sha256(f"{name}\0{text}".encode()).digest()
        out[name] = 2.0 + (digest[0] % 16) / 2.0
    return out


def generated_article(user_text: str) -> str:
    """The fake's answer to a generation request: the source (after the delimiter) under a new title and a
    new lede, both from a hash of the whole request, so each variant differs and a rerun gets the same."""
    digest = hashlib.sha256(user_text.encode()).hexdigest()
    source = user_text.partition(SOURCE_DELIMITER)[2] or user_text
    first, _, rest = source.strip().partition("\n")
    return json.dumps({"title": f"Report {digest[:8]}: {first[:60]}",
                       "content": f"Correspondents filed this report ({digest[:12]}).\n\n{rest.strip() or first}"})


@dataclass
class Seen:
    api: str
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]
    user_text: str
    case: str
    key: str
    count: int
    started: float
    ended: float = 0.0


@dataclass
class Plan:
    status: int = 200
    text: str = GOOD_TEXT
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw_body: dict[str, Any] | None = None


class FakeOracle:
    """The fake API itself: routing, the answer plan per case, the record of requests."""

    def __init__(self, api_key: str, *, slow_delay: float = 0.15, hang: float = 1.0,
                 dimensions_from_prompt: bool = False) -> None:
        self.api_key = api_key
        self.dimensions_from_prompt = dimensions_from_prompt
        self.slow_delay = slow_delay
        self.hang = hang
        # What a 429 asks the client to wait, in seconds (as the header or Gemini's body says it).
        self.retry_after = "1"
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        raise NotImplementedError

    def calls(self, key: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.key == key]

    # ------------------------------------------------------------------------------------ handling

    def _plan(self, case: str, count: int, body: dict[str, Any], api: str, user_text: str = "") -> Plan:
        first = count == 1
        dims = prompt_dimensions(_system_text(body, api)) if self.dimensions_from_prompt else []
        good_text = json.dumps({**hashed_scores(dims, user_text), "reasoning": "scored by the fake oracle"}) \
            if dims else GOOD_TEXT
        if GENERATION_MARKER in _system_text(body, api):
            good_text = generated_article(user_text)
            # Scoring cases do not apply to a generation request: it gets its article, which carries the
            # marker on, so that labelling the generated article is what fails.
            if case in ("missing", "range"):
                case = "good"
        good = Plan(text=good_text)
        if case == "good":
            return good
        if case == "fenced":
            return Plan(text=f"Here is my assessment:\n```json\n{good_text}\n```\nHope that helps {{really}}.")
        if case == "prose":
            return Plan(text=f"I weighed it {{carefully}} and {{ \"not\": json ]}}. Result: {good_text} — done.")
        if case == "malformed":
            return Plan(text='{"alpha": 7, "beta": 3,, "reasoning": "oops"}')
        if case == "malformed_once":
            return Plan(text='{"alpha": {"score": 7}, "beta": ') if first else good
        if case == "missing":
            if dims:
                return Plan(text=json.dumps({**hashed_scores(dims[:-1], user_text), "reasoning": "forgot one"}))
            return Plan(text='{"alpha": 7, "reasoning": "forgot beta"}')
        if case == "range":
            if dims:
                return Plan(text=json.dumps({**hashed_scores(dims, user_text), dims[0]: 11, "reasoning": "too keen"}))
            return Plan(text='{"alpha": 11, "beta": 3, "reasoning": "too keen"}')
        if case == "slow":
            return Plan(text=good_text, delay=self.slow_delay)
        if case == "slow_once":
            return Plan(text=good_text, delay=self.hang) if first else good
        if case == "429_once":
            return Plan(status=429, headers={"Retry-After": self.retry_after}) if first else good
        if case == "429_body_once":  # Gemini's way: no header, a RetryInfo in the error body
            info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.retry_after}s"}
            return Plan(status=429, raw_body={"error": {"code": 429, "details": [info]}}) if first else good
        if case == "500_once":
            return Plan(status=500) if first else good
        if case == "bad_gateway":
            return Plan(status=502)
        if case == "bad_request":
            return Plan(status=400)
        if case == "revoked":
            return Plan(status=401)
        if case == "strict_format":
            if "response_format" in body:
                return Plan(status=400, raw_body={"error": {"message": "response_format is not supported"}})
            return good
        if case == "echo_key":
            # A model that quotes the key it was called with (prompt injection, a chatty proxy),
            # raw in the reasoning and URL-encoded in an evidence string.
            answer = {"alpha": {"score": 7, "evidence": f"see https://x.test/?key={quote(self.api_key, safe='')}"},
                      "beta": 3.5, "reasoning": f"the key is {self.api_key}"}
            return Plan(text=json.dumps(answer))
        if case == "redirect":
            # A gateway that moved, sending the client on with the key in the new URL; httpcore's DEBUG
            # trace prints the response headers, Location included.
            location = f"{self.url}/moved?key={quote(self.api_key, safe='')}&raw={self.api_key}"
            return Plan(status=302, headers={"Location": location})
        if case == "blocked" and api == "gemini":
            return Plan(raw_body={"promptFeedback": {"blockReason": "SAFETY"},
                                  "usageMetadata": {"promptTokenCount": USAGE_IN}})
        raise FakeOracleError(f"the fake oracle has no case {case!r}")

    def begin(self, path: str, query: str, headers: dict[str, str], body: dict[str, Any]
              ) -> tuple[Seen | None, float, int, dict[str, Any], dict[str, str]]:
        """Record the request; return it, how long to stall, and the status, payload and headers to send.
        The transport calls :meth:`end` once the answer is out."""
        started = time.monotonic()
        headers = {k.lower(): v for k, v in headers.items()}
        if path.endswith("/chat/completions"):
            api, presented = "openai", headers.get("authorization", "").removeprefix("Bearer ")
            user_text = body["messages"][-1]["content"]
        elif GEMINI_PATH.match(path):
            api, presented = "gemini", headers.get("x-goog-api-key", "")
            user_text = body["contents"][-1]["parts"][0]["text"]
        else:
            return None, 0.0, 404, {"error": {"message": f"no route {path}"}}, {}
        match = MARKER.search(user_text)
        case, key = match.groups() if match else ("good", "?")
        with self._lock:
            self._counts[key] = count = self._counts.get(key, 0) + 1
            seen = Seen(api, path, query, headers, body, user_text, case, key, count, started)
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if presented != self.api_key:
            # Real APIs echo part of a wrong key; echo all of it to prove the client scrubs it.
            return seen, 0.0, 401, {"error": {"message": f"invalid key {presented}"}}, {}
        plan = self._plan(case, count, body, api, user_text)
        if plan.status != 200:
            message = f"key {presented} is revoked" if plan.status == 401 else f"status {plan.status}"
            return seen, plan.delay, plan.status, plan.raw_body or {"error": {"message": message}}, plan.headers
        if plan.raw_body is not None:
            return seen, plan.delay, 200, plan.raw_body, {}
        return seen, plan.delay, 200, self._answer(api, body, plan.text), {}

    def end(self, seen: Seen | None) -> None:
        if seen is None:
            return
        with self._lock:
            self.in_flight -= 1
            seen.ended = time.monotonic()

    @staticmethod
    def _answer(api: str, body: dict[str, Any], text: str) -> dict[str, Any]:
        if api == "openai":
            return {"id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
                              "total_tokens": USAGE_IN + USAGE_OUT}}
        return {"candidates": [{"finishReason": "STOP", "index": 0,
                                "content": {"role": "model", "parts": [
                                    {"text": "Let me think {about it}.", "thought": True}, {"text": text}]}}],
                "usageMetadata": {"promptTokenCount": USAGE_IN, "candidatesTokenCount": USAGE_OUT,
                                  "thoughtsTokenCount": USAGE_THINKING,
                                  "totalTokenCount": USAGE_IN + USAGE_OUT + USAGE_THINKING}}


def _system_text(body: dict[str, Any], api: str) -> str:
    try:
        if api == "openai":
            return str(body["messages"][0]["content"])
        return str(body["systemInstruction"]["parts"][0]["text"])
    except (KeyError, IndexError, TypeError):
        return ""


class OracleServer(FakeOracle):
    """The fake on a real HTTP server at 127.0.0.1 (an ephemeral port)."""

    def __init__(self, api_key: str, *, slow_delay: float = 0.15, hang: float = 1.0,
                 dimensions_from_prompt: bool = False) -> None:
        super().__init__(api_key, slow_delay=slow_delay, hang=hang, dimensions_from_prompt=dimensions_from_prompt)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OracleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        length = int(req.headers.get("Content-Length", "0"))
        body = json.loads(req.rfile.read(length) or b"{}")
        seen, delay, status, payload, headers = self.begin(parts.path, parts.query, dict(req.headers.items()), body)
        try:
            if delay:
                time.sleep(delay)
            self._send(req, status, payload, headers)
        finally:
            self.end(seen)

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                req.send_header(name, value)
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer


class MockOracle(FakeOracle):
    """The fake as an :class:`httpx.MockTransport`: no socket, no thread; pass :attr:`transport` to the
    client (``label_file(..., transport=fake.transport)``) or build an ``httpx.AsyncClient`` on it."""

    base_url = "http://oracle.test"

    def __init__(self, api_key: str, *, slow_delay: float = 0.15, hang: float = 1.0,
                 dimensions_from_prompt: bool = False) -> None:
        super().__init__(api_key, slow_delay=slow_delay, hang=hang, dimensions_from_prompt=dimensions_from_prompt)
        self.transport = httpx.MockTransport(self._handle)

    @property
    def url(self) -> str:
        return self.base_url

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        seen, delay, status, payload, headers = self.begin(request.url.path, request.url.query.decode(),
                                                           dict(request.headers.items()), body)
        try:
            if delay:
                await asyncio.sleep(delay)
            return httpx.Response(status, json=payload, headers=headers)
        finally:
            self.end(seen)


__all__ = ["GOOD", "GOOD_TEXT", "MARKER", "USAGE_IN", "USAGE_OUT", "USAGE_THINKING", "FakeOracle", "FakeOracleError",
           "MockOracle", "OracleServer", "Plan", "Seen", "generated_article", "hashed_scores", "prompt_dimensions"]
