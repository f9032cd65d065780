"""The labeller against the fake API on a real loopback socket: what a mock transport cannot show
(timeouts, connection limits, a redirect and httpcore's own DEBUG logging) and stop-and-resume runs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from scoring.package import FilterPackage
from scoring.redact import HTTP_LOGGERS, secret_forms
from streams import logs
from tests.training.oracle.common import ENV, GOOD_SCORES, KEY_ENV, ODD_KEY, art, read_jsonl, settings
from tests.training.oracle_server import OracleServer
from training.oracle import completed_ids, label_file


def test_timeout_then_success(server: OracleServer, package: FilterPackage, tmp_path: Path) -> None:
    summary = label_file(package, [art("slow_once", "t1")], tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                         settings(server, timeout=0.3), env=ENV)
    assert (summary.labelled, summary.retries) == (1, 1)
    assert len(server.calls("t1")) == 2
    assert read_jsonl(tmp_path / "o.jsonl")[0]["oracle"]["scores"] == GOOD_SCORES


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
    # A lower bound only (a loaded machine can only make it later): 600 rpm = one every 0.1 s.
    assert starts[-1] - starts[0] >= 3 * 0.1 * 0.9


# ----------------------------------------------------------------------------------------- resume

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


# ---------------------------------------------------------------------------------- debug logging

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


def _leaks(data: bytes, key: str) -> list[str]:
    return sorted(form for form in secret_forms(key) if form.encode() in data)


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
