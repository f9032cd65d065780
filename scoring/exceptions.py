"""Errors of the scoring core, and the project's root exception.

Every error a caller may want to route (to a reject file, a dead-letter topic, a log line) carries the
coordinates that locate it: the article id, the field, the filter and its version. Streams add the
Kafka topic/partition/offset through :meth:`FluxscoreError.with_context`.
"""

from __future__ import annotations

from typing import Any


class FluxscoreError(Exception):
    """Root of every error fluxscore raises on purpose."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}

    def with_context(self, **context: Any) -> FluxscoreError:
        """Add coordinates learnt further up the stack (topic, partition, offset…); returns self."""
        self.context.update({k: v for k, v in context.items() if v is not None})
        return self

    def __str__(self) -> str:
        if not self.context:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} [{where}]"


class ArticleValidationError(FluxscoreError):
    """An input record is not a valid article; names the article id (when known) and the field."""

    def __init__(self, message: str, *, article_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message, article_id=article_id, field=field)
        self.article_id = article_id
        self.field = field


class PackageError(FluxscoreError):
    """A filter package cannot be found, parsed or validated."""

    def __init__(self, message: str, *, filter: str | None = None, path: str | None = None) -> None:
        super().__init__(message, filter=filter, path=path)
        self.filter = filter
        self.path = path


class PackageNotFoundError(PackageError):
    """No package matches the reference (name, name@version or directory)."""


class ModelFilesMissingError(PackageError):
    """The package's config names model files that are not there (e.g. untrained production filters)."""

    def __init__(self, message: str, *, missing: list[str], filter: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, filter=filter, path=path)
        self.missing = missing


class PackagePathError(PackageError):
    """A path a package names (or a file or link under a directory it names) leads outside the package."""

    def __init__(self, message: str, *, field: str | None = None, filter: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, filter=filter, path=path)
        self.with_context(field=field)
        self.field = field


class PackageIntegrityError(PackageError):
    """A package's files differ from the sha256 hashes recorded when it was exported; ``files`` names them."""

    def __init__(self, message: str, *, files: list[str] | None = None, filter: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, filter=filter, path=path)
        self.files = list(files or [])


class UnverifiedPackageError(PackageIntegrityError):
    """A package holds model files but no export manifest of their hashes, so nothing vouches for them."""


class ModelLoadError(FluxscoreError):
    """A model (embedding, probe, base, adapter) exists but could not be loaded."""


class ScoringError(FluxscoreError):
    """A stage failed for an article that was valid on input."""

    def __init__(self, message: str, *, article_id: str | None = None, filter: str | None = None,
                 stage: str | None = None) -> None:
        super().__init__(message, article_id=article_id, filter=filter, stage=stage)
        self.article_id = article_id
        self.filter = filter
        self.stage = stage


class SettingsError(FluxscoreError):
    """An environment variable holds a value that cannot be used; ``variable`` names it."""

    def __init__(self, message: str, *, variable: str | None = None, **context: Any) -> None:
        super().__init__(message, variable=variable, **context)
        self.variable = variable
