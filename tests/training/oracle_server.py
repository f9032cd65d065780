"""A small real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions and Gemini
generateContent APIs, for testing the oracle client.

What it answers is chosen by a marker in the article text, ``case:<name> key:<id>``; ``key`` counts
calls so that cases like "fail once, then succeed" work per article. Every request is recorded with
its headers, body, and start/end times, and the highest number of requests in flight is tracked.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

MARKER = re.compile(r"case:(\S+) key:(\S+)")
GEMINI_PATH = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")
USAGE_IN, USAGE_OUT, USAGE_THINKING = 100, 20, 5

GOOD: dict[str, Any] = {"alpha": {"score": 7, "evidence": "says so"}, "beta": 3.5, "reasoning": "solid"}
GOOD_TEXT = json.dumps(GOOD)


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


class OracleServer:
    def __init__(self, api_key: str, *, slow_delay: float = 0.15, hang: float = 1.0) -> None:
        self.api_key = api_key
        self.slow_delay = slow_delay
        self.hang = hang
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
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
        self._httpd.shutdown()
        self._httpd.server_close()

    def calls(self, key: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.key == key]

    # ------------------------------------------------------------------------------------ handling

    def _plan(self, case: str, count: int, body: dict[str, Any], api: str) -> Plan:
        first = count == 1
        if case == "good":
            return Plan()
        if case == "fenced":
            return Plan(text=f"Here is my assessment:\n```json\n{GOOD_TEXT}\n```\nHope that helps {{really}}.")
        if case == "prose":
            return Plan(text=f"I weighed it {{carefully}} and {{ \"not\": json ]}}. Result: {GOOD_TEXT} — done.")
        if case == "malformed":
            return Plan(text='{"alpha": 7, "beta": 3,, "reasoning": "oops"}')
        if case == "malformed_once":
            return Plan(text='{"alpha": {"score": 7}, "beta": ') if first else Plan()
        if case == "missing":
            return Plan(text='{"alpha": 7, "reasoning": "forgot beta"}')
        if case == "range":
            return Plan(text='{"alpha": 11, "beta": 3, "reasoning": "too keen"}')
        if case == "slow":
            return Plan(delay=self.slow_delay)
        if case == "slow_once":
            return Plan(delay=self.hang) if first else Plan()
        if case == "429_once":
            return Plan(status=429, headers={"Retry-After": "1"}) if first else Plan()
        if case == "500_once":
            return Plan(status=500) if first else Plan()
        if case == "bad_request":
            return Plan(status=400)
        if case == "revoked":
            return Plan(status=401)
        if case == "strict_format":
            if "response_format" in body:
                return Plan(status=400, raw_body={"error": {"message": "response_format is not supported"}})
            return Plan()
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
        raise AssertionError(f"unknown case {case!r}")

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        parts = urlsplit(req.path)
        length = int(req.headers.get("Content-Length", "0"))
        body = json.loads(req.rfile.read(length) or b"{}")
        headers = {k.lower(): v for k, v in req.headers.items()}
        if parts.path.endswith("/chat/completions"):
            api, presented = "openai", headers.get("authorization", "").removeprefix("Bearer ")
            user_text = body["messages"][-1]["content"]
        elif GEMINI_PATH.match(parts.path):
            api, presented = "gemini", headers.get("x-goog-api-key", "")
            user_text = body["contents"][-1]["parts"][0]["text"]
        else:
            self._send(req, 404, {"error": {"message": f"no route {parts.path}"}})
            return
        match = MARKER.search(user_text)
        case, key = match.groups() if match else ("good", "?")
        with self._lock:
            self._counts[key] = count = self._counts.get(key, 0) + 1
            seen = Seen(api, parts.path, parts.query, headers, body, user_text, case, key, count, started)
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if presented != self.api_key:
                # Real APIs echo part of a wrong key; echo all of it to prove the client scrubs it.
                self._send(req, 401, {"error": {"message": f"invalid key {presented}"}})
                return
            plan = self._plan(case, count, body, api)
            if plan.delay:
                time.sleep(plan.delay)
            if plan.status != 200:
                message = f"key {presented} is revoked" if plan.status == 401 else f"status {plan.status}"
                error = plan.raw_body or {"error": {"message": message}}
                self._send(req, plan.status, error, plan.headers)
            elif plan.raw_body is not None:
                self._send(req, 200, plan.raw_body)
            else:
                self._send(req, 200, self._answer(api, body, plan.text))
        finally:
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
