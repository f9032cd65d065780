"""Keeping secrets (the oracle's API key) out of everything that leaves the process.

:class:`Redactor` replaces a secret and its common encodings in a string, or in every string of a
JSON-like value (output records are scrubbed whole, so a field added later cannot leak). Secrets
registered with :func:`register_secret` are also scrubbed from every log record by
:class:`SecretFilter`, which :func:`protect_logging` puts on the root logger's handlers; it also keeps
the HTTP libraries' own loggers at WARNING, because at DEBUG they print request and response headers
(a redirect's ``Location`` may carry a key) in shapes no filter can be sure to recognise.

This lives in ``scoring`` so that every entry point (the ``fluxscore`` command, the stream worker,
training) can use it without importing the others.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
# Loggers of the HTTP stacks in our dependency tree; their DEBUG output includes headers.
HTTP_LOGGERS = ("httpx", "httpcore", "urllib3", "requests", "hpack", "h11", "h2")
_PERCENT = re.compile(r"%[0-9A-F]{2}")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def secret_forms(secret: str) -> set[str]:
    """The secret as it may appear in text: raw, URL-encoded (either hex case), JSON-escaped, and
    inside a Python ``repr`` of the str or of its bytes (how httpcore's DEBUG lines print headers)."""
    if not secret:
        return set()
    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
             repr(secret)[1:-1], repr(secret.encode())[2:-1]}
    forms |= {_PERCENT.sub(lambda m: m.group().lower(), f) for f in forms}
    return {f for f in forms if f}


class Redactor:
    """Replaces every form of its secrets with ``***``; empty when it has none (then a no-op)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._forms: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        forms = secret_forms(secret)
        with self._lock:
            # Longest first, so a form that contains another (the JSON-escaped key, most of the raw
            # one) is replaced whole rather than leaving its tail.
            self._forms = tuple(sorted(set(self._forms) | forms, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def contains(self, text: str) -> bool:
        return any(form in text for form in self._forms)

    def text(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def value(self, value: Any) -> Any:
        """``value`` with every string in it redacted, dict keys included; other leaves unchanged
        (tuples come back as lists: the values are JSON-like)."""
        if not self._forms:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


# Process-wide: the log filter cannot be handed the key by whoever happens to log.
SECRETS = Redactor()


def register_secret(secret: str) -> None:
    """From now on, scrub ``secret`` from every log record that passes a :class:`SecretFilter`."""
    SECRETS.add(secret)


class SecretFilter(logging.Filter):
    """Scrubs registered secrets from a record's message, extra fields and traceback; drops nothing."""

    def __init__(self, redactor: Redactor = SECRETS) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactor:
            return True
        message = record.getMessage()
        if self.redactor.contains(message):
            record.msg, record.args = self.redactor.text(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:  # fields passed with extra=, which the formatters print
                setattr(record, key, self.redactor.value(value))
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set, so the scrubbed traceback is the one shown.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)
        return True


def quiet_http_loggers() -> None:
    """Keep the HTTP libraries' loggers at WARNING or above, whatever level the process logs at."""
    names = set(HTTP_LOGGERS)
    # Child loggers (httpcore.http11, …) given a level of their own would not inherit the parent's.
    names |= {name for name in logging.root.manager.loggerDict
              if any(name.startswith(prefix + ".") for prefix in HTTP_LOGGERS)}
    for name in names:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def protect_logging(handlers: Iterable[logging.Handler] | None = None) -> None:
    """:func:`quiet_http_loggers`, and a :class:`SecretFilter` on ``handlers`` (default: the root
    logger's) that lack one. Idempotent; every entry point calls it after configuring logging."""
    quiet_http_loggers()
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())


__all__ = ["HTTP_LOGGERS", "MASK", "SECRETS", "Redactor", "SecretFilter", "protect_logging", "quiet_http_loggers",
           "register_secret", "secret_forms"]
