from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from scoring.redact import HTTP_LOGGERS, register_secret
from streams.logs import JsonFormatter, TextFormatter, configure

SECRET = "sk-logs-test-9f8e7d6c5b4a"


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("fluxscore.streams.test", logging.WARNING, __file__, 1, "batch %s done", ("b1",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_message_level_static_and_extra_fields() -> None:
    line = JsonFormatter(worker="host:1:probe").format(_record(stage="probe", size=64, path=object()))
    body = orjson.loads(line)
    assert body["msg"] == "batch b1 done" and body["level"] == "warning"
    assert body["logger"] == "fluxscore.streams.test" and body["worker"] == "host:1:probe"
    assert body["stage"] == "probe" and body["size"] == 64
    assert body["path"].startswith("<object")  # anything not JSON-native is logged as text, never dropped
    assert "ts" in body and "\n" not in line


def test_json_lines_include_the_traceback() -> None:
    try:
        raise ValueError("kaput")
    except ValueError:
        import sys

        record = _record()
        record.exc_info = sys.exc_info()
    assert "ValueError: kaput" in orjson.loads(JsonFormatter().format(record))["exc"]


def test_text_format_appends_fields() -> None:
    assert TextFormatter().format(_record(stage="model")).endswith("batch b1 done  stage=model")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure() rewires the root logger; put back what pytest had, and the HTTP loggers' levels."""
    root = logging.getLogger()
    names = [*HTTP_LOGGERS, "httpcore.http11", "httpcore.connection"]
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names})
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)  # as in a new process
    yield
    handlers, level, levels = saved
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


@pytest.mark.usefixtures("restored_logging")
def test_http_libraries_stay_at_warning_whatever_the_level() -> None:
    logging.getLogger("httpcore.http11").setLevel(logging.DEBUG)  # even a child given a level of its own
    configure("json", "DEBUG")
    assert logging.getLogger("fluxscore.streams.test").isEnabledFor(logging.DEBUG)
    for name in (*HTTP_LOGGERS, "httpcore.http11", "httpcore.connection"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO), name
        assert logger.isEnabledFor(logging.WARNING), name


@pytest.mark.usefixtures("restored_logging")
def test_the_handler_scrubs_registered_secrets_from_message_fields_and_traceback() -> None:
    register_secret(SECRET)
    buffer = io.StringIO()
    configure("json", "DEBUG", worker="w1").setStream(buffer)
    log = logging.getLogger("fluxscore.streams.test")
    log.debug("redirected to %s", f"https://h/?key={SECRET}", extra={"headers": {"x-api-key": SECRET}})
    try:
        raise RuntimeError(f"refused {SECRET}")
    except RuntimeError:
        log.exception("call failed")
    lines = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
    assert SECRET not in buffer.getvalue()
    assert lines[0]["msg"] == "redirected to https://h/?key=***" and lines[0]["headers"] == {"x-api-key": "***"}
    assert lines[1]["msg"] == "call failed" and "RuntimeError: refused ***" in lines[1]["exc"]
    assert lines[1]["worker"] == "w1"
