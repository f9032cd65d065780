"""Structured logs: one JSON object per line, with the ``extra`` fields a call passes.

Registered secrets are scrubbed from every line and the HTTP libraries never log below WARNING
(:mod:`scoring.redact`): at DEBUG they print headers, which may carry a key.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from scoring.redact import protect_logging

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, **static: Any) -> None:
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_text:  # set by scoring.redact.SecretFilter: the scrubbed traceback
            body["exc"] = record.exc_text
        elif record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        return line + ("  " + " ".join(f"{k}={v}" for k, v in fields.items()) if fields else "")


def log_handler(fmt: str, **static: Any) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(**static) if fmt == "json" else TextFormatter())
    return handler


def configure(fmt: str, level: str, **static: Any) -> logging.Handler:
    """Route the root logger (ours, Faust's, aiokafka's) through one structured handler on stderr,
    which scrubs registered secrets; HTTP libraries stay at WARNING whatever ``level`` is."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    handler = log_handler(fmt, **static)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter at INFO (every fetch, every rebalance step) drowns the worker's own lines.
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    protect_logging([handler])
    return handler


def quiet_progress_bars() -> None:
    """No transformers/hub progress bars: on stderr they would break the one-JSON-object-per-line log stream."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
