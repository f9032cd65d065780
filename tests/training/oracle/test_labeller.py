"""The labeller end to end against the fake API over httpx.MockTransport: validation, retries and their
waits, rejects, accounting, resume-free cases, and keeping the key out of every output."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from pathlib import Path

import pytest
from tenacity import RetryCallState

from scoring.article import Article
from scoring.exceptions import ArticleValidationError
from scoring.package import FilterPackage
from scoring.redact import HTTP_LOGGERS, secret_forms
from tests.training.oracle.common import ENV, GOOD_SCORES, KEY, KEY_ENV, ODD_KEY, art, read_jsonl, settings
from tests.training.oracle_server import USAGE_IN, USAGE_OUT, USAGE_THINKING, MockOracle
from training.exceptions import TrainingError
from training.oracle import (
    LabelEvent,
    OracleAnswerError,
    OracleConfigError,
    OracleError,
    OracleRequestError,
    RateLimiter,
    build_messages,
    label_articles,
    label_file,
)
from training.oracle.errors import RetryableRequest
from training.oracle.labeller import _OracleWait

LABELLER_LOG = "training.oracle.labeller"


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The waits the retry policy chose, as its log lines report them."""
    return [r.backoff_s for r in caplog.records if r.name == LABELLER_LOG and hasattr(r, "backoff_s")]


def test_build_messages_places_article_and_lists_dimensions(package: FilterPackage) -> None:
    system, user = build_messages(package, "Judge this:\n{article}\nEnd.", "THE TEXT")
    assert user == "Judge this:\nTHE TEXT\nEnd."
    assert "alpha: how alpha" in system and "JSON" in system
    assert build_messages(package, "Judge.", "THE TEXT")[1].endswith("ARTICLE:\nTHE TEXT")


def test_missing_key_fails_before_any_request(fake: MockOracle, package: FilterPackage, tmp_path: Path) -> None:
    with pytest.raises(OracleConfigError, match=KEY_ENV):
        label_file(package, [art("good", "a")], tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(fake),
                   env={}, transport=fake.transport)
    assert fake.seen == []


# ------------------------------------------------------------------------------------ end to end

@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_labels_validates_retries_rejects_and_accounts(provider: str, fake: MockOracle, package: FilterPackage,
                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out, rejects = tmp_path / "labelled.jsonl", tmp_path / "rejects.jsonl"
    cases = ["good", "fenced", "prose", "malformed_once", "500_once", "missing", "range", "malformed"]
    articles = [art(c, f"{provider}-{c}", tags=["t1"], metadata={"m": 1}) for c in cases]
    events: list[LabelEvent] = []
    summary = label_file(package, articles, out, rejects, settings(fake, provider), events.append, env=ENV,
                         transport=fake.transport)

    labelled = {r["id"]: r for r in read_jsonl(out)}
    rejected = {r["id"]: r for r in read_jsonl(rejects)}
    ok = ["good", "fenced", "prose", "malformed_once", "500_once"]
    assert sorted(labelled) == sorted(f"{provider}-{c}" for c in ok)
    assert sorted(rejected) == sorted(f"{provider}-{c}" for c in ["missing", "range", "malformed"])
    thinking = USAGE_THINKING if provider == "gemini" else 0
    for rid, record in labelled.items():
        assert record["title"] == f"Title {rid}" and record["tags"] == ["t1"] and record["metadata"] == {"m": 1}
        oracle = record["oracle"]
        assert oracle["scores"] == GOOD_SCORES
        assert oracle["reasoning"] == "solid"
        assert (oracle["filter"], oracle["filter_version"], oracle["model"], oracle["provider"]) == (
            "toy", "1.0.0", "toy-model", provider)
        datetime.fromisoformat(oracle["labelled_at"])
    once = labelled[f"{provider}-malformed_once"]["oracle"]["usage"]
    assert (once["attempts"], once["input_tokens"], once["output_tokens"]) == (
        2, 2 * USAGE_IN, 2 * (USAGE_OUT + thinking))
    # The 500 carried no usage: only the successful call is counted.
    assert labelled[f"{provider}-500_once"]["oracle"]["usage"]["input_tokens"] == USAGE_IN

    # Every rejected answer is kept with its raw text and its error; no scores were invented.
    for case, problem in [("missing", "beta: missing"), ("range", "alpha: 11.0 outside 0-10"),
                          ("malformed", "no JSON object")]:
        reject = rejected[f"{provider}-{case}"]
        assert "oracle" not in reject
        info = reject["oracle_reject"]
        assert problem in info["reason"]
        assert [e["attempt"] for e in info["errors"]] == [1, 2, 3]
        assert all(e["raw"] for e in info["errors"])
        assert info["usage"]["attempts"] == 3
        assert len(fake.calls(f"{provider}-{case}")) == 3

    calls = {c: len(fake.calls(f"{provider}-{c}")) for c in cases}
    assert calls == {"good": 1, "fenced": 1, "prose": 1, "malformed_once": 2, "500_once": 2,
                     "missing": 3, "range": 3, "malformed": 3}
    answered = sum(calls.values()) - 1  # one 500
    assert (summary.labelled, summary.rejected, summary.skipped) == (5, 3, 0)
    assert summary.retries == 1 + 1 + 2 + 2 + 2
    assert summary.requests == sum(calls.values())
    assert summary.input_tokens == answered * USAGE_IN
    assert summary.output_tokens == answered * (USAGE_OUT + thinking)
    assert summary.cost == pytest.approx((summary.input_tokens * 1.0 + summary.output_tokens * 2.0) / 1e6)
    assert summary.wall_seconds > 0
    kinds = [e.kind for e in events]
    assert kinds.count("labelled") == 5 and kinds.count("rejected") == 3 and kinds.count("retry") == 8
    assert events[-1].summary.labelled + events[-1].summary.rejected == 8
    # An invalid answer is asked again at once; only the 500 waited (backoff 10 ms, jittered).
    waits = retry_waits(caplog)
    assert len(waits) == 8 and sorted(waits)[:7] == [0.0] * 7 and 0.005 <= max(waits) <= 0.01

    for seen in fake.seen:
        if provider == "gemini":
            assert seen.path == "/v1beta/models/toy-model:generateContent"
            assert seen.headers["x-goog-api-key"] == KEY and "key" not in seen.query
            assert seen.body["generationConfig"]["responseMimeType"] == "application/json"
        else:
            assert seen.headers["authorization"] == f"Bearer {KEY}"
            assert seen.body["model"] == "toy-model" and seen.body["response_format"] == {"type": "json_object"}
        assert "Rate the article on alpha and beta" in seen.user_text
    assert KEY not in out.read_text() + rejects.read_text() + caplog.text
    # Even at DEBUG the HTTP libraries say nothing below WARNING: their DEBUG lines print headers.
    assert not [r for r in caplog.records if r.name.split(".")[0] in HTTP_LOGGERS and r.levelno < logging.WARNING]


def test_retries_log_a_warning_first_then_debug(fake: MockOracle, package: FilterPackage, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LABELLER_LOG)
    summary = label_file(package, [art("malformed", "m1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(fake, max_attempts=4), env=ENV, transport=fake.transport)
    assert (summary.rejected, summary.retries) == (1, 3)
    lines = [r for r in caplog.records if r.name == LABELLER_LOG and hasattr(r, "attempt")]
    assert [(r.attempt, r.levelno) for r in lines] == [(1, logging.WARNING), (2, logging.DEBUG), (3, logging.DEBUG)]
    assert lines[0].getMessage().startswith("article m1: no JSON object in the answer")


# -------------------------------------------------------------------------------- waits (no clock)

@pytest.mark.parametrize(("provider", "case"), [("openai", "429_once"), ("gemini", "429_once"),
                                                ("gemini", "429_body_once")])
def test_429_retry_after_is_honoured(provider: str, case: str, fake: MockOracle, package: FilterPackage,
                                     tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LABELLER_LOG)
    fake.retry_after = "0.03"
    # Backoff alone would wait 2.5-5 s; the server said 30 ms.
    summary = label_file(package, [art(case, "r1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(fake, provider, backoff=5.0, max_wait=10.0), env=ENV, transport=fake.transport)
    assert (summary.labelled, summary.retries, len(fake.calls("r1"))) == (1, 1, 2)
    assert retry_waits(caplog) == [0.03]


def test_429_wait_is_capped_by_max_wait(fake: MockOracle, package: FilterPackage, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LABELLER_LOG)
    fake.retry_after = "120"
    summary = label_file(package, [art("429_once", "r2")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(fake, max_wait=0.02), env=ENV, transport=fake.transport)
    assert summary.labelled == 1
    assert retry_waits(caplog) == [0.02]


def _failed(exc: BaseException, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(None, None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_the_oracle_wait_pauses_every_worker_on_a_429_and_skips_waiting_for_a_bad_answer(
        fake: MockOracle) -> None:
    limiter = RateLimiter(0)
    wait = _OracleWait(settings(fake, backoff=1.0, max_wait=8.0), limiter)
    assert wait(_failed(OracleAnswerError("invalid scores: beta: missing"))) == 0.0
    assert limiter._resume_at == 0.0
    assert 2.0 <= wait(_failed(RetryableRequest("HTTP 500"), attempt=3)) <= 4.0  # 1 * 2**2, jittered
    assert limiter._resume_at == 0.0  # a 500 is this request's trouble, not the rate limit's
    before = time.monotonic()
    assert wait(_failed(RetryableRequest("HTTP 429", 30.0, throttled=True))) == 8.0
    assert before + 8.0 <= limiter._resume_at <= time.monotonic() + 8.0


def test_the_rate_limit_is_a_bucket_of_one(fake: MockOracle) -> None:
    limiter = RateLimiter(600)
    assert limiter.interval == pytest.approx(0.1)
    assert limiter._bucket is not None
    assert (limiter._bucket.max_rate, limiter._bucket.time_period) == (1, pytest.approx(0.1))
    assert RateLimiter(0)._bucket is None

    async def unlimited() -> None:
        free = RateLimiter(0)
        for _ in range(100):
            await free.acquire()  # no limit: never waits

    asyncio.run(asyncio.wait_for(unlimited(), 5))


# ------------------------------------------------------------------------------- this article only

def test_revoked_key_stops_the_run_without_leaking_the_key(fake: MockOracle, package: FilterPackage, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out, rejects = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    articles = [art("good", "k0"), art("revoked", "k1"), *[art("good", f"k{i}") for i in range(2, 12)]]
    with pytest.raises(OracleRequestError) as info:
        label_file(package, articles, out, rejects, settings(fake, concurrency=1), env=ENV, transport=fake.transport)
    assert info.value.status == 401
    assert isinstance(info.value, TrainingError)
    assert info.value.context["filter"] == "toy@1.0.0" and info.value.context["step"] == "label"
    assert "***" in str(info.value) and KEY not in str(info.value) and KEY not in repr(info.value.args)
    assert [r["id"] for r in read_jsonl(out)] == ["k0"]  # what was done stays, nothing after the refusal
    assert len(fake.seen) == 2
    assert KEY not in caplog.text + out.read_text() + rejects.read_text()


def test_wrong_key_is_fatal(fake: MockOracle, package: FilterPackage, tmp_path: Path) -> None:
    with pytest.raises(OracleRequestError, match="HTTP 401") as info:
        label_file(package, [art("good", "w1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                   settings(fake, "gemini"), env={KEY_ENV: "wrong-key-123"}, transport=fake.transport)
    assert "wrong-key-123" not in str(info.value)


def test_bad_request_rejects_only_that_article(fake: MockOracle, package: FilterPackage, tmp_path: Path) -> None:
    summary = label_file(package, [art("bad_request", "b1"), art("good", "b2")], tmp_path / "o.jsonl",
                         tmp_path / "r.jsonl", settings(fake), env=ENV, transport=fake.transport)
    assert (summary.labelled, summary.rejected, summary.retries) == (1, 1, 0)
    reject = read_jsonl(tmp_path / "r.jsonl")[0]["oracle_reject"]
    assert "HTTP 400" in reject["reason"] and reject["usage"]["attempts"] == 1 and len(reject["errors"]) == 1


def test_gemini_blocked_prompt_is_rejected_without_retries(fake: MockOracle, package: FilterPackage,
                                                           tmp_path: Path) -> None:
    summary = label_file(package, [art("blocked", "g1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(fake, "gemini"), env=ENV, transport=fake.transport)
    assert (summary.rejected, len(fake.seen)) == (1, 1)
    reject = read_jsonl(tmp_path / "r.jsonl")[0]["oracle_reject"]
    assert "SAFETY" in reject["reason"] and reject["usage"]["input_tokens"] == 0


def test_500s_until_out_of_attempts_reject_with_every_error(fake: MockOracle, package: FilterPackage,
                                                            tmp_path: Path) -> None:
    summary = label_file(package, [art("bad_gateway", "x5")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(fake, max_attempts=2), env=ENV, transport=fake.transport)
    assert (summary.rejected, summary.retries, len(fake.calls("x5"))) == (1, 1, 2)
    reject = read_jsonl(tmp_path / "r.jsonl")[0]["oracle_reject"]
    assert [e["error"][:8] for e in reject["errors"]] == ["HTTP 502", "HTTP 502"]
    assert reject["reason"].startswith("HTTP 502")


def test_openai_falls_back_when_json_mode_is_unsupported(fake: MockOracle, package: FilterPackage,
                                                         tmp_path: Path) -> None:
    summary = label_file(package, [art("strict_format", "j1"), art("strict_format", "j2")], tmp_path / "o.jsonl",
                         tmp_path / "r.jsonl", settings(fake, concurrency=1), env=ENV, transport=fake.transport)
    assert summary.labelled == 2
    assert ["response_format" in s.body for s in fake.seen] == [True, False, False]


def test_article_text_is_truncated_to_the_budget(fake: MockOracle, package: FilterPackage, tmp_path: Path) -> None:
    long = Article(id="long1", title="case:good key:long1", content="word " * 5000)
    label_file(package, [long], tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(fake, max_chars=300),
               env=ENV, transport=fake.transport)
    sent = fake.seen[0].user_text
    assert sent.endswith(("word", "word ")) and len(sent.split("ARTICLE:\n", 1)[1]) == 300
    assert read_jsonl(tmp_path / "o.jsonl")[0]["oracle"]["truncated"] is True


def test_label_file_reads_jsonl_and_reports_bad_line(fake: MockOracle, package: FilterPackage,
                                                     tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(art("good", "f1").to_dict()) + "\n\n" + '{"title": "no id"}\n')
    with pytest.raises(ArticleValidationError) as info:
        label_file(package, src, tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(fake), env=ENV,
                   transport=fake.transport)
    assert info.value.context["line"] == 3
    assert [r["id"] for r in read_jsonl(tmp_path / "o.jsonl")] == ["f1"]  # in-flight work still landed


def test_label_articles_takes_the_transport_too(fake: MockOracle, package: FilterPackage, tmp_path: Path) -> None:
    summary = asyncio.run(label_articles(package, [art("good", "la1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                                         settings(fake), env=ENV, transport=fake.transport))
    assert summary.labelled == 1 and [s.key for s in fake.seen] == ["la1"]


# ------------------------------------------------------------------------------------------ secrets

def _leaks(data: bytes, key: str) -> list[str]:
    return sorted(form for form in secret_forms(key) if form.encode() in data)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_an_answer_quoting_the_key_is_scrubbed_from_every_output(provider: str, odd_fake: MockOracle,
                                                                package: FilterPackage, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out, rejects = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    articles = [art("echo_key", "e1"), art("malformed", "e2"),
                Article(id="e3", title=f"leaked {ODD_KEY}", content="case:good key:e3 body", source="test",
                        metadata={"note": {"deep": [f"k={ODD_KEY}"]}})]
    events: list[LabelEvent] = []
    summary = label_file(package, articles, out, rejects, settings(odd_fake, provider), events.append,
                         env={KEY_ENV: ODD_KEY}, transport=odd_fake.transport)
    assert (summary.labelled, summary.rejected) == (2, 1)
    assert any(ODD_KEY in s.user_text for s in odd_fake.seen)  # the key did reach the model's input
    data = out.read_bytes() + rejects.read_bytes()
    assert _leaks(data, ODD_KEY) == []
    assert _leaks(caplog.text.encode(), ODD_KEY) == []  # the retry log lines included
    labelled = {r["id"]: r for r in read_jsonl(out)}
    assert labelled["e1"]["oracle"]["reasoning"] == "the key is ***"
    assert labelled["e1"]["oracle"]["scores"] == GOOD_SCORES
    assert labelled["e3"]["title"] == "leaked ***" and labelled["e3"]["metadata"] == {"note": {"deep": ["k=***"]}}
    assert not [e for e in events if ODD_KEY in e.detail + e.article_id]


def test_an_unexpected_error_quoting_the_key_is_raised_without_it(fake: MockOracle, package: FilterPackage,
                                                                  tmp_path: Path) -> None:
    def progress(event: LabelEvent) -> None:
        raise RuntimeError(f"the progress display broke on {KEY}")

    with pytest.raises(OracleError) as info:
        label_file(package, [art("good", "x1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(fake),
                   progress, env=ENV, transport=fake.transport)
    assert "RuntimeError" in str(info.value) and "***" in str(info.value)
    assert KEY not in str(info.value) + repr(info.value.args)
