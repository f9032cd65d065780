"""The oracle client against a real local HTTP server speaking the OpenAI and Gemini APIs."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from scoring.article import Article
from scoring.exceptions import ArticleValidationError, FluxscoreError
from scoring.package import FilterPackage, load_package
from scoring.redact import HTTP_LOGGERS, secret_forms
from streams import logs
from tests.training.oracle_server import USAGE_IN, USAGE_OUT, USAGE_THINKING, OracleServer
from training.exceptions import TrainingError
from training.oracle import (
    LabelEvent,
    OracleAnswerError,
    OracleConfigError,
    OracleError,
    OracleRequestError,
    OracleSettings,
    build_messages,
    completed_ids,
    extract_json,
    label_file,
    parse_retry_after,
    validate_scores,
)

KEY = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "FLUXSCORE_TEST_ORACLE_KEY"
ENV = {KEY_ENV: KEY}
GOOD_SCORES = {"alpha": 7.0, "beta": 3.5}


@pytest.fixture
def package(tmp_path: Path) -> FilterPackage:
    pkg = tmp_path / "pkg" / "toy" / "1.0.0"
    pkg.mkdir(parents=True)
    config = {
        "name": "toy", "version": "1.0.0",
        "dimensions": [{"name": "alpha", "weight": 0.5, "description": "how alpha"},
                       {"name": "beta", "weight": 0.5, "description": "how beta"}],
        "stage1": {"embedding_model": "unused", "probe": "probe.safetensors", "probe_meta": "probe.json",
                   "threshold": 3.0},
        "oracle_prompt": "prompt.md",
    }
    (pkg / "filter.yaml").write_text(yaml.safe_dump(config))
    (pkg / "prompt.md").write_text("Rate the article on alpha and beta, 0-10, as JSON.")
    return load_package(pkg)


@pytest.fixture
def server() -> Iterator[OracleServer]:
    srv = OracleServer(KEY, hang=1.0).start()
    yield srv
    srv.stop()


def settings(server: OracleServer, provider: str = "openai", **kw: Any) -> OracleSettings:
    base = server.url + ("/v1" if provider == "openai" else "")
    values: dict[str, Any] = {"provider": provider, "base_url": base, "model": "toy-model", "api_key_env": KEY_ENV,
                              "concurrency": 4, "rpm": 0, "max_attempts": 3, "timeout": 2.0, "backoff": 0.01,
                              "max_wait": 3.0, "price_input_per_m": 1.0, "price_output_per_m": 2.0}
    values.update(kw)
    return OracleSettings(**values)


def art(case: str, key: str, **kw: Any) -> Article:
    return Article(id=key, title=f"Title {key}", content=f"case:{case} key:{key} and some body text.",
                   source="test", **kw)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------------------- parsing

def test_extract_json_finds_object_in_fences_and_prose() -> None:
    obj = {"alpha": 7, "beta": {"score": 2, "evidence": "a } brace and a \" quote {"}}
    text = json.dumps(obj)
    assert extract_json(text) == obj
    assert extract_json(f"Sure!\n```json\n{text}\n```\nbye") == obj
    assert extract_json(f"I considered {{the context}} first. {text} and {{more}}") == obj


def test_extract_json_skips_broken_object_whole_instead_of_returning_its_inner_object() -> None:
    broken = '{"alpha": {"score": 7}, "beta": 3,,}'
    with pytest.raises(OracleAnswerError, match="no JSON object") as info:
        extract_json(broken)
    assert info.value.raw == broken
    assert extract_json(broken + ' then {"alpha": 1, "beta": 2}') == {"alpha": 1, "beta": 2}


@pytest.mark.parametrize("text", ["", "no json here", '{"alpha": 7', "[1, 2, 3]", '{"alpha": NaN, "beta": 1}',
                                  '{"alpha": Infinity}'])
def test_extract_json_rejects(text: str) -> None:
    with pytest.raises(OracleAnswerError):
        extract_json(text)


def test_validate_scores_accepts_both_shapes_and_nesting() -> None:
    assert validate_scores({"alpha": 7, "beta": 0, "reasoning": "r"}, ["alpha", "beta"]) == (
        {"alpha": 7.0, "beta": 0.0}, "r")
    scores, reasoning = validate_scores({"alpha": {"score": 10, "evidence": "e1"},
                                         "beta": {"score": 2.5, "evidence": "e2"}, "extra": 99}, ["alpha", "beta"])
    assert scores == {"alpha": 10.0, "beta": 2.5}
    assert reasoning == "alpha: e1\nbeta: e2"
    assert validate_scores({"scores": {"alpha": 1, "beta": 2}}, ["alpha", "beta"])[0] == {"alpha": 1.0, "beta": 2.0}


@pytest.mark.parametrize(("obj", "problem"), [
    ({"alpha": 7}, "beta: missing"),
    ({"alpha": 7, "beta": 10.5}, "beta: 10.5 outside 0-10"),
    ({"alpha": -1, "beta": 1}, "alpha: -1.0 outside 0-10"),
    ({"alpha": "7", "beta": 1}, "alpha: not a number"),
    ({"alpha": True, "beta": 1}, "alpha: not a number"),
    ({"alpha": None, "beta": 1}, "alpha: not a number"),
    ({"alpha": {"evidence": "x"}, "beta": 1}, "alpha: object without 'score'"),
    ({"alpha": {"score": "high"}, "beta": 1}, "alpha: not a number"),
])
def test_validate_scores_rejects_never_defaults(obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(OracleAnswerError, match=problem):
        validate_scores(obj, ["alpha", "beta"])


def test_parse_retry_after_seconds_date_and_ms() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": format_datetime(now + timedelta(seconds=7), usegmt=True)},
                             now=now) == pytest.approx(7.0)
    assert parse_retry_after({"retry-after": format_datetime(now - timedelta(seconds=7), usegmt=True)},
                             now=now) == 0.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_build_messages_places_article_and_lists_dimensions(package: FilterPackage) -> None:
    system, user = build_messages(package, "Judge this:\n{article}\nEnd.", "THE TEXT")
    assert user == "Judge this:\nTHE TEXT\nEnd."
    assert "alpha: how alpha" in system and "JSON" in system
    assert build_messages(package, "Judge.", "THE TEXT")[1].endswith("ARTICLE:\nTHE TEXT")


# --------------------------------------------------------------------------------------- settings

def test_settings_from_env_defaults_overrides_and_errors() -> None:
    s = OracleSettings.from_env({})
    assert (s.provider, s.base_url, s.api_key_env) == ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY")
    g = OracleSettings.from_env({"FLUXSCORE_ORACLE_PROVIDER": "gemini", "FLUXSCORE_ORACLE_RPM": "30",
                                 "FLUXSCORE_ORACLE_CONCURRENCY": "8", "FLUXSCORE_ORACLE_PRICE_INPUT": "0.3",
                                 "FLUXSCORE_ORACLE_JSON_MODE": "false", "FLUXSCORE_ORACLE_BASE_URL": "http://x/"},
                                model="gemini-x")
    assert (g.provider, g.api_key_env, g.rpm, g.concurrency, g.price_input_per_m, g.json_mode, g.base_url,
            g.model) == ("gemini", "GEMINI_API_KEY", 30.0, 8, 0.3, False, "http://x", "gemini-x")
    for bad in ({"FLUXSCORE_ORACLE_PROVIDER": "claude"}, {"FLUXSCORE_ORACLE_CONCURRENCY": "0"},
                {"FLUXSCORE_ORACLE_TIMEOUT": "soon"}, {"FLUXSCORE_ORACLE_JSON_MODE": "maybe"}):
        with pytest.raises(OracleConfigError):
            OracleSettings.from_env(bad)
    with pytest.raises(OracleConfigError, match="OPENAI_API_KEY") as info:
        s.api_key({})
    assert isinstance(info.value, FluxscoreError)


def test_missing_key_fails_before_any_request(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    with pytest.raises(OracleConfigError, match=KEY_ENV):
        label_file(package, [art("good", "a")], tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(server),
                   env={})
    assert server.seen == []


# ------------------------------------------------------------------------------------ end to end

@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_labels_validates_retries_rejects_and_accounts(provider: str, server: OracleServer,
                                                       package: FilterPackage, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out, rejects = tmp_path / "labelled.jsonl", tmp_path / "rejects.jsonl"
    cases = ["good", "fenced", "prose", "malformed_once", "500_once", "missing", "range", "malformed"]
    articles = [art(c, f"{provider}-{c}", tags=["t1"], metadata={"m": 1}) for c in cases]
    events: list[LabelEvent] = []
    summary = label_file(package, articles, out, rejects, settings(server, provider), events.append, env=ENV)

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
        assert len(server.calls(f"{provider}-{case}")) == 3

    calls = {c: len(server.calls(f"{provider}-{c}")) for c in cases}
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

    for seen in server.seen:
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


def test_timeout_then_success(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    summary = label_file(package, [art("slow_once", "t1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(server, timeout=0.3), env=ENV)
    assert (summary.labelled, summary.retries) == (1, 1)
    assert len(server.calls("t1")) == 2
    assert read_jsonl(tmp_path / "o.jsonl")[0]["oracle"]["scores"] == GOOD_SCORES


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_429_retry_after_is_honoured(provider: str, server: OracleServer, package: FilterPackage,
                                     tmp_path: Path) -> None:
    summary = label_file(package, [art("429_once", "r1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(server, provider), env=ENV)
    first, second = server.calls("r1")
    assert summary.labelled == 1
    # Backoff alone would wait ~0.01 s; Retry-After says 1 s.
    assert second.started - first.ended >= 0.95


def test_429_wait_is_capped_by_max_wait(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    label_file(package, [art("429_once", "r2")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
               settings(server, max_wait=0.2), env=ENV)
    first, second = server.calls("r2")
    assert 0.15 <= second.started - first.ended < 0.8


def test_resume_skips_done_ids_without_requests(server: OracleServer, package: FilterPackage,
                                                tmp_path: Path) -> None:
    out, rejects = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    first = [art("good", f"d{i}") for i in range(3)]
    label_file(package, first, out, rejects, settings(server), env=ENV)
    assert len(server.seen) == 3
    more = [*first, art("good", "d3"), art("good", "d3"), art("good", "d4")]
    summary = label_file(package, more, out, rejects, settings(server), env=ENV)
    assert (summary.labelled, summary.skipped) == (2, 4)  # three done, one duplicate in the input
    assert sorted(s.key for s in server.seen[3:]) == ["d3", "d4"]
    assert sorted(r["id"] for r in read_jsonl(out)) == ["d0", "d1", "d2", "d3", "d4"]  # completion order


def test_resume_cuts_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_bytes(b'{"id": "x1", "oracle": {}}\n{"id": "x2", "orac')
    assert completed_ids(out) == {"x1"}
    assert out.read_bytes() == b'{"id": "x1", "oracle": {}}\n'
    assert completed_ids(tmp_path / "absent.jsonl") == set()


def test_concurrency_cap_is_respected(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    articles = [art("slow", f"c{i}") for i in range(9)]
    summary = label_file(package, articles, tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(server, concurrency=3), env=ENV)
    assert summary.labelled == 9
    assert server.max_in_flight == 3


def test_rate_limit_spaces_requests(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    articles = [art("good", f"q{i}") for i in range(4)]
    label_file(package, articles, tmp_path / "o.jsonl", tmp_path / "r.jsonl",
               settings(server, concurrency=4, rpm=600), env=ENV)
    starts = sorted(s.started for s in server.seen)
    assert starts[-1] - starts[0] >= 3 * 0.1 * 0.9  # 600 rpm = one every 0.1 s


def test_revoked_key_stops_the_run_without_leaking_the_key(server: OracleServer, package: FilterPackage,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    out, rejects = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    articles = [art("good", "k0"), art("revoked", "k1"), *[art("good", f"k{i}") for i in range(2, 12)]]
    with pytest.raises(OracleRequestError) as info:
        label_file(package, articles, out, rejects, settings(server, concurrency=1), env=ENV)
    assert info.value.status == 401
    assert isinstance(info.value, TrainingError)
    assert info.value.context["filter"] == "toy@1.0.0" and info.value.context["step"] == "label"
    assert "***" in str(info.value) and KEY not in str(info.value) and KEY not in repr(info.value.args)
    assert [r["id"] for r in read_jsonl(out)] == ["k0"]  # what was done stays, nothing after the refusal
    assert len(server.seen) == 2
    assert KEY not in caplog.text + out.read_text() + rejects.read_text()


def test_wrong_key_is_fatal(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    with pytest.raises(OracleRequestError, match="HTTP 401") as info:
        label_file(package, [art("good", "w1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                   settings(server, "gemini"), env={KEY_ENV: "wrong-key-123"})
    assert "wrong-key-123" not in str(info.value)


def test_bad_request_rejects_only_that_article(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    summary = label_file(package, [art("bad_request", "b1"), art("good", "b2")], tmp_path / "o.jsonl",
                         tmp_path / "r.jsonl", settings(server), env=ENV)
    assert (summary.labelled, summary.rejected, summary.retries) == (1, 1, 0)
    assert "HTTP 400" in read_jsonl(tmp_path / "r.jsonl")[0]["oracle_reject"]["reason"]


def test_gemini_blocked_prompt_is_rejected_without_retries(server: OracleServer, package: FilterPackage,
                                                           tmp_path: Path) -> None:
    summary = label_file(package, [art("blocked", "g1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(server, "gemini"), env=ENV)
    assert (summary.rejected, len(server.seen)) == (1, 1)
    reject = read_jsonl(tmp_path / "r.jsonl")[0]["oracle_reject"]
    assert "SAFETY" in reject["reason"] and reject["usage"]["input_tokens"] == 0


def test_openai_falls_back_when_json_mode_is_unsupported(server: OracleServer, package: FilterPackage,
                                                         tmp_path: Path) -> None:
    summary = label_file(package, [art("strict_format", "j1"), art("strict_format", "j2")], tmp_path / "o.jsonl",
                         tmp_path / "r.jsonl", settings(server, concurrency=1), env=ENV)
    assert summary.labelled == 2
    assert ["response_format" in s.body for s in server.seen] == [True, False, False]


def test_article_text_is_truncated_to_the_budget(server: OracleServer, package: FilterPackage,
                                                 tmp_path: Path) -> None:
    long = Article(id="long1", title="case:good key:long1", content="word " * 5000)
    label_file(package, [long], tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(server, max_chars=300),
               env=ENV)
    sent = server.seen[0].user_text
    assert sent.endswith(("word", "word ")) and len(sent.split("ARTICLE:\n", 1)[1]) == 300
    assert read_jsonl(tmp_path / "o.jsonl")[0]["oracle"]["truncated"] is True


def test_label_file_reads_jsonl_and_reports_bad_line(server: OracleServer, package: FilterPackage,
                                                     tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(art("good", "f1").to_dict()) + "\n\n" + '{"title": "no id"}\n')
    start = time.monotonic()
    with pytest.raises(ArticleValidationError) as info:
        label_file(package, src, tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(server), env=ENV)
    assert info.value.context["line"] == 3
    assert [r["id"] for r in read_jsonl(tmp_path / "o.jsonl")] == ["f1"]  # in-flight work still landed
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------------------------------ secrets

# Characters that URL-encoding changes, so that the encoded forms differ from the raw key.
ODD_KEY = "sk-live/AbC+def=ghi&jkl%2Fmno"


@pytest.fixture
def odd_server() -> Iterator[OracleServer]:
    srv = OracleServer(ODD_KEY).start()
    yield srv
    srv.stop()


def _leaks(data: bytes, key: str) -> list[str]:
    return sorted(form for form in secret_forms(key) if form.encode() in data)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_an_answer_quoting_the_key_is_scrubbed_from_every_output(provider: str, odd_server: OracleServer,
                                                                package: FilterPackage, tmp_path: Path) -> None:
    out, rejects = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    articles = [art("echo_key", "e1"), art("malformed", "e2"),
                Article(id="e3", title=f"leaked {ODD_KEY}", content="case:good key:e3 body", source="test",
                        metadata={"note": {"deep": [f"k={ODD_KEY}"]}})]
    events: list[LabelEvent] = []
    summary = label_file(package, articles, out, rejects, settings(odd_server, provider), events.append,
                         env={KEY_ENV: ODD_KEY})
    assert (summary.labelled, summary.rejected) == (2, 1)
    assert any(ODD_KEY in s.user_text for s in odd_server.seen)  # the key did reach the model's input
    data = out.read_bytes() + rejects.read_bytes()
    assert _leaks(data, ODD_KEY) == []
    labelled = {r["id"]: r for r in read_jsonl(out)}
    assert labelled["e1"]["oracle"]["reasoning"] == "the key is ***"
    assert labelled["e1"]["oracle"]["scores"] == GOOD_SCORES
    assert labelled["e3"]["title"] == "leaked ***" and labelled["e3"]["metadata"] == {"note": {"deep": ["k=***"]}}
    assert not [e for e in events if ODD_KEY in e.detail + e.article_id]


def test_an_unexpected_error_quoting_the_key_is_raised_without_it(server: OracleServer, package: FilterPackage,
                                                                  tmp_path: Path) -> None:
    def progress(event: LabelEvent) -> None:
        raise RuntimeError(f"the progress display broke on {KEY}")

    with pytest.raises(OracleError) as info:
        label_file(package, [art("good", "x1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl", settings(server),
                   progress, env=ENV)
    assert "RuntimeError" in str(info.value) and "***" in str(info.value)
    assert KEY not in str(info.value) + repr(info.value.args)


@pytest.fixture
def fresh_logging() -> Iterator[io.StringIO]:
    """Root logging as a new process has it (HTTP loggers never quietened), restored afterwards."""
    root = logging.getLogger()
    names = [*HTTP_LOGGERS, *(n for n in logging.root.manager.loggerDict if n.split(".")[0] in HTTP_LOGGERS)]
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names})
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield io.StringIO()
    handlers, level, levels = saved
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


@pytest.mark.parametrize("setup", ["streams.logs.configure", "plain root handler"])
def test_debug_logging_never_prints_the_key_even_from_a_redirect(setup: str, odd_server: OracleServer,
                                                                 package: FilterPackage, tmp_path: Path,
                                                                 fresh_logging: io.StringIO) -> None:
    if setup == "streams.logs.configure":  # the stream worker's logging
        logs.configure("json", "DEBUG").setStream(fresh_logging)
    else:  # what `fluxscore` does (logging.basicConfig at FLUXSCORE_LOG_LEVEL)
        root = logging.getLogger()
        root.handlers[:] = [logging.StreamHandler(fresh_logging)]
        root.setLevel(logging.DEBUG)
    summary = label_file(package, [art("redirect", "rd1"), art("good", "rd2")], tmp_path / "o.jsonl",
                         tmp_path / "r.jsonl", settings(odd_server), env={KEY_ENV: ODD_KEY})
    assert (summary.labelled, summary.rejected) == (1, 1)
    assert "HTTP 302" in read_jsonl(tmp_path / "r.jsonl")[0]["oracle_reject"]["reason"]
    # The redirect was not followed: the key went to the configured URL only.
    assert [s.path for s in odd_server.seen] == ["/v1/chat/completions"] * 2
    logging.getLogger("training.oracle").debug("a line of our own with %s in it", ODD_KEY)
    text = fresh_logging.getvalue()
    assert _leaks(text.encode(), ODD_KEY) == []
    assert "a line of our own with *** in it" in text  # DEBUG lines did reach the handler, scrubbed
