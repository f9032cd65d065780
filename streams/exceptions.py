"""Errors of the streaming shell. All subclass :class:`scoring.exceptions.FluxscoreError`.

Errors about one record carry its coordinates (topic, partition, offset, article id, stage) so that the
dead-letter record and the log line say exactly where it came from.
"""

from __future__ import annotations

from scoring.exceptions import FluxscoreError, SettingsError


class StreamError(FluxscoreError):
    """Root of the errors raised by ``streams``."""


class StreamSettingsError(StreamError, SettingsError):
    """An environment variable of the stream worker holds a value that cannot be used."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        SettingsError.__init__(self, message, variable=variable)


class WireFormatError(StreamError):
    """A message between stages (screened article, escalation) cannot be decoded."""

    def __init__(self, message: str, *, stage: str | None = None, article_id: str | None = None) -> None:
        super().__init__(message, stage=stage, article_id=article_id)
        self.stage = stage
        self.article_id = article_id


class EmbeddedServiceError(StreamError):
    """The embedded broker or Redis server could not be started."""


class BrokerUnavailableError(StreamError):
    """The Kafka cluster cannot be reached."""


class MessageTooLargeError(StreamError):
    """What one input produced is larger than the topics can carry; the input is dead-lettered."""

    def __init__(self, message: str, *, topic: str | None = None, article_id: str | None = None,
                 stage: str | None = None) -> None:
        super().__init__(message, topic=topic, article_id=article_id, stage=stage)
