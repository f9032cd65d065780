"""Configs and records into pydantic models: one YAML loader, one way to word a validation error.

Filter packages (``filter.yaml``), the commerce package (``commerce.yaml``), input articles and the
items that travel between stream stages are all validated by pydantic; their errors read alike, each
problem as ``location: message``:

>>> from pydantic import BaseModel, Field
>>> class Rule(BaseModel):
...     name: str
...     weight: float = Field(gt=0)
>>> try:
...     Rule.model_validate({"weight": -1})
... except ValidationError as exc:
...     print(format_validation_error(exc))
...     print(format_validation_error(exc, first_only=True))
name: Field required; weight: Input should be greater than 0
name: Field required (and 1 more)

A file that is not YAML, not a mapping, or not valid for the model raises ``error`` (a
:class:`~scoring.exceptions.PackageError` by default) that names the file, in its message and as ``path``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from scoring.exceptions import FluxscoreError, PackageError

M = TypeVar("M", bound=BaseModel)

ROOT = "<root>"
# What pydantic puts before the message of a ValueError a validator raises; it says nothing to a reader.
_VALUE_ERROR_PREFIX = "Value error, "


def error_location(error: ErrorDetails) -> str:
    """Dotted path of the value an error is about (``groups.0.weight``), ``""`` for the whole input."""
    return ".".join(str(part) for part in error["loc"])


def error_message(error: ErrorDetails) -> str:
    return error["msg"].removeprefix(_VALUE_ERROR_PREFIX)


def format_validation_error(exc: ValidationError, *, first_only: bool = False, quoted: bool = False) -> str:
    """``loc: msg; loc: msg`` for every problem, or the first one and ``(and N more)``.

    ``first_only`` suits records (a dead letter or a reject line names one reason, not a report);
    ``quoted`` writes each location as a string literal (``'id': …``), as article errors name fields.
    The offending input values are never included: they may be a whole article.
    """
    errors = exc.errors()
    shown = errors[:1] if first_only else errors

    def one(error: ErrorDetails) -> str:
        where = error_location(error) or ROOT
        return f"{where!r}: {error_message(error)}" if quoted else f"{where}: {error_message(error)}"

    text = "; ".join(one(e) for e in shown)
    hidden = len(errors) - len(shown)
    return text + (f" (and {hidden} more)" if hidden else "")


def load_yaml_model(path: Path, model: type[M], /, *, error: Callable[..., FluxscoreError] = PackageError,
                    context_of: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                    **context: Any) -> M:
    """``model`` from the YAML mapping in the file ``path``.

    Raises ``error(message, path=str(path), **context)`` when the file is not YAML, holds something other
    than a mapping, or does not validate. ``context_of`` adds context read from the mapping to a validation
    error (a package whose config is invalid is still named by the ``name`` it gives). A file that cannot be
    read raises its ``OSError`` as it is: callers that list many files report those themselves.
    """
    context = {"path": str(path), **context}
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}", **context) from None
    if not isinstance(raw, dict):
        raise error(f"{path} must hold a mapping", **context)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        extra = dict(context_of(raw)) if context_of is not None else {}
        raise error(f"{path} is invalid: {format_validation_error(exc)}", **{**context, **extra}) from None
