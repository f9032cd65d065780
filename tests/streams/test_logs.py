from __future__ import annotations

import logging

import orjson

from streams.logs import JsonFormatter, TextFormatter


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
