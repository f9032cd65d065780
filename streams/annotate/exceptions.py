"""Errors of the annotator service; each maps to one HTTP status in :mod:`streams.annotate.app`."""

from __future__ import annotations

from typing import ClassVar

from streams.exceptions import StreamError, StreamSettingsError


class AnnotateError(StreamError):
    """Root of the annotator service's errors."""

    # The HTTP status the web page and the JSON API answer with.
    status: ClassVar[int] = 400


class AnnotateSettingsError(StreamSettingsError):
    """A ``FLUXSCORE_ANNOTATE_*`` (or labels database) variable holds a value that cannot be used."""


class UnknownFilterError(AnnotateError):
    """The filter is not one of ``FLUXSCORE_ANNOTATE_FILTERS``."""

    status = 404


class NotQueuedError(AnnotateError):
    """The item is not (or no longer) in the queue."""

    status = 404


class LeaseLostError(AnnotateError):
    """The item is leased to someone else (this annotator's lease expired and it was handed out again)."""

    status = 409


class AlreadyLabelledError(AnnotateError):
    """This annotator has labelled this item already: one person never labels one item twice."""

    status = 409


class InvalidLabelError(AnnotateError):
    """Scores or note fail validation (unknown or missing dimension, out of 0..10, note too long)."""

    status = 422


class ServiceUnavailableError(AnnotateError):
    """The terminal commands cannot reach the annotator service, or it answered with an error."""

    status = 503
