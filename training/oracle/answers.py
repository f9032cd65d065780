"""Reading the model's answer: the JSON object in it, then its scores.

The scores are validated by a pydantic model built from the filter's dimension names
(:func:`answer_model`): every dimension must be a number from 0 to 10, or an object with such a
``score`` and optional ``evidence`` (or ``reasoning``) text. Anything short of that is an
:class:`~training.oracle.errors.OracleAnswerError` naming each problem (``beta: missing``,
``alpha: 11.0 outside 0-10``, ``alpha: not a number ('7')``); a missing or invalid score is never
turned into a default.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic_core import ErrorDetails

from training.oracle.errors import OracleAnswerError

# Where an answer may nest its scores instead of listing them at the top level.
_NESTS = ("scores", "dimensions")
_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the ``}`` closing the ``{`` at ``start``; braces inside JSON strings ignored."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def extract_json(text: str) -> dict[str, Any]:
    """The first balanced top-level JSON object in ``text`` (fences and prose around it are ignored).

    A balanced ``{...}`` that does not parse (prose such as ``{see below}``) is skipped whole, never
    searched inside, so a broken answer cannot yield one of its own nested objects.
    """
    pos = 0
    problems: list[str] = []
    while (start := text.find("{", pos)) != -1:
        end = _balanced_end(text, start)
        if end is None:
            problems.append(f"unterminated object at character {start}")
            break
        candidate = text[start:end]
        try:
            value = json.loads(candidate, parse_constant=_reject_constant)
        except ValueError as exc:
            problems.append(f"invalid JSON at character {start}: {exc}")
            pos = end
            continue
        if isinstance(value, dict):
            return value
        pos = end
    detail = "; ".join(problems[:3]) if problems else "no '{' in the answer"
    raise OracleAnswerError(f"no JSON object in the answer ({detail})", raw=text)


def _text_or_none(value: Any) -> str | None:
    # Evidence and reasoning are commentary the labels do not depend on: a non-string one is dropped
    # rather than costing the article its scores.
    return value if isinstance(value, str) else None


def _as_entry(value: Any) -> Any:
    # A bare score is shorthand for {"score": value}. Whatever is not an object is judged as a score,
    # so "7", true and null fail as "not a number" rather than as "not an object".
    return dict(value) if isinstance(value, Mapping) else {"score": value}


Text = Annotated[str | None, BeforeValidator(_text_or_none)]
# Strict: a bool (an int to Python) or a numeric string is not a score; NaN and infinities are not either.
Score = Annotated[float, Field(strict=True, ge=0.0, le=10.0, allow_inf_nan=False)]


class DimensionAnswer(BaseModel):
    """One dimension's answer: the score, and the evidence the model gave for it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    score: Score
    evidence: Text = None
    reasoning: Text = None

    @property
    def note(self) -> str | None:
        return self.evidence if self.evidence is not None else self.reasoning


@functools.lru_cache(maxsize=64)
def answer_model(dimensions: tuple[str, ...]) -> type[BaseModel]:
    """The answer model for these dimensions: one required :class:`DimensionAnswer` per dimension;
    other keys (the answer's own ``reasoning``, dimensions the filter does not know) are ignored.

    Fields are named ``dim_<i>`` and take the dimension's name as alias, so that any name (``json``,
    ``model_config``, one with a dash) works as a key without clashing with pydantic's own attributes.
    """
    fields: dict[str, Any] = {
        f"dim_{i}": (Annotated[DimensionAnswer, BeforeValidator(_as_entry)], Field(alias=name))
        for i, name in enumerate(dimensions)}
    model: type[BaseModel] = create_model("OracleAnswer", __config__=ConfigDict(extra="ignore"), **fields)
    return model


def _shown(value: Any) -> str:
    try:
        return str(float(value))
    except (TypeError, ValueError, OverflowError):  # an integer too large for a float
        return f"{value!r:.40}"


def _problem(error: ErrorDetails) -> str:
    """One validation error as the rejects file words it (the location starts with the dimension name)."""
    loc = [str(part) for part in error["loc"]]
    dim, inner = loc[0], loc[1:]
    kind = error["type"]
    if kind == "missing":
        return f"{dim}: missing" if not inner else f"{dim}: object without {inner[0]!r}"
    if inner == ["score"] and kind in _RANGE_ERRORS:
        return f"{dim}: {_shown(error['input'])} outside 0-10"
    if inner == ["score"]:
        return f"{dim}: not a number ({error['input']!r:.40})"
    return f"{'.'.join(loc)}: {error['msg']}"


def validate_scores(obj: Mapping[str, Any], dimensions: Iterable[str]) -> tuple[dict[str, float], str | None]:
    """Scores for every dimension (0-10, numeric) and the reasoning text, or :class:`OracleAnswerError`.

    Accepts ``{"dim": 7}``, ``{"dim": {"score": 7, "evidence": "..."}}``, and either form nested under
    ``"scores"`` or ``"dimensions"``. Dimensions the filter does not know are ignored. The reasoning is
    the answer's ``reasoning`` text, else the dimensions' evidence, one ``dim: text`` line each.
    """
    dims = tuple(dimensions)
    source: Mapping[str, Any] = obj
    for nest in _NESTS:
        inner = obj.get(nest)
        if isinstance(inner, dict) and not any(d in obj for d in dims):
            source = inner
            break
    try:
        answer = answer_model(dims).model_validate(dict(source))
    except ValidationError as exc:
        raise OracleAnswerError("invalid scores: " + "; ".join(_problem(e) for e in exc.errors())) from None
    entries: list[DimensionAnswer] = [getattr(answer, f"dim_{i}") for i in range(len(dims))]
    scores = {d: e.score for d, e in zip(dims, entries, strict=True)}
    reasoning = obj.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        reasoning = "\n".join(f"{d}: {e.note}" for d, e in zip(dims, entries, strict=True)
                              if e.note is not None) or None
    return scores, reasoning


def parse_answer(text: str, dimensions: Iterable[str]) -> tuple[dict[str, float], str | None]:
    """:func:`extract_json` then :func:`validate_scores`; errors keep the raw text."""
    try:
        return validate_scores(extract_json(text), dimensions)
    except OracleAnswerError as exc:
        exc.raw = text
        raise


__all__ = ["DimensionAnswer", "answer_model", "extract_json", "parse_answer", "validate_scores"]
