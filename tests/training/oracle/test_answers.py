"""Reading the model's answer: the JSON object in it, and its scores validated against the dimensions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from training.oracle import OracleAnswerError, extract_json, parse_answer, validate_scores
from training.oracle.answers import answer_model

DIMS = ["alpha", "beta"]


def test_extract_json_finds_object_in_fences_and_prose() -> None:
    obj = {"alpha": 7, "beta": {"score": 2, "evidence": "a } brace and a \" quote {"}}
    text = json.dumps(obj)
    assert extract_json(text) == obj
    assert extract_json(f"Sure!\n```json\n{text}\n```\nbye") == obj
    assert extract_json(f"I considered {{the context}} first. {text} and {{more}}") == obj


def test_extract_json_skips_broken_object_whole_instead_of_returning_its_inner_object() -> None:
    broken = '{"alpha": {"score": 7}, "beta": 3,,}'
    with pytest.raises(OracleAnswerError, match="no JSON object") as info:
        extract_json(broken)
    assert info.value.raw == broken
    assert extract_json(broken + ' then {"alpha": 1, "beta": 2}') == {"alpha": 1, "beta": 2}


@pytest.mark.parametrize("text", ["", "no json here", '{"alpha": 7', "[1, 2, 3]", '{"alpha": NaN, "beta": 1}',
                                  '{"alpha": Infinity}'])
def test_extract_json_rejects(text: str) -> None:
    with pytest.raises(OracleAnswerError):
        extract_json(text)


def test_validate_scores_accepts_both_shapes_and_nesting() -> None:
    assert validate_scores({"alpha": 7, "beta": 0, "reasoning": "r"}, DIMS) == ({"alpha": 7.0, "beta": 0.0}, "r")
    scores, reasoning = validate_scores({"alpha": {"score": 10, "evidence": "e1"},
                                         "beta": {"score": 2.5, "evidence": "e2"}, "extra": 99}, DIMS)
    assert scores == {"alpha": 10.0, "beta": 2.5}
    assert reasoning == "alpha: e1\nbeta: e2"
    assert validate_scores({"scores": {"alpha": 1, "beta": 2}}, DIMS)[0] == {"alpha": 1.0, "beta": 2.0}
    assert validate_scores({"dimensions": {"alpha": 1, "beta": {"score": 2}}, "reasoning": "top"}, DIMS) == (
        {"alpha": 1.0, "beta": 2.0}, "top")


def test_per_dimension_reasoning_counts_as_evidence_and_odd_commentary_is_dropped() -> None:
    scores, reasoning = validate_scores({"alpha": {"score": 1, "reasoning": "why a"},
                                         "beta": {"score": 2, "evidence": 5}, "reasoning": "  "}, DIMS)
    assert scores == {"alpha": 1.0, "beta": 2.0}
    assert reasoning == "alpha: why a"  # blank top-level reasoning: the evidence stands in; 5 is no text
    assert validate_scores({"alpha": 1, "beta": 2}, DIMS) == ({"alpha": 1.0, "beta": 2.0}, None)


@pytest.mark.parametrize(("obj", "problem"), [
    ({"alpha": 7}, "beta: missing"),
    ({"alpha": 7, "beta": 10.5}, "beta: 10.5 outside 0-10"),
    ({"alpha": -1, "beta": 1}, "alpha: -1.0 outside 0-10"),
    ({"alpha": float("nan"), "beta": 1}, "alpha: nan outside 0-10"),
    ({"alpha": "7", "beta": 1}, "alpha: not a number"),
    ({"alpha": True, "beta": 1}, "alpha: not a number"),
    ({"alpha": None, "beta": 1}, "alpha: not a number"),
    ({"alpha": [7], "beta": 1}, "alpha: not a number"),
    ({"alpha": {"evidence": "x"}, "beta": 1}, "alpha: object without 'score'"),
    ({"alpha": {"score": "high"}, "beta": 1}, "alpha: not a number"),
])
def test_validate_scores_rejects_never_defaults(obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(OracleAnswerError, match=problem):
        validate_scores(obj, DIMS)


def test_every_problem_is_named_in_dimension_order() -> None:
    with pytest.raises(OracleAnswerError) as info:
        validate_scores({"beta": 11, "gamma": "x"}, ["alpha", "beta", "gamma"])
    assert info.value.message == "invalid scores: alpha: missing; beta: 11.0 outside 0-10; gamma: not a number ('x')"


def test_the_model_is_built_from_the_dimension_names_whatever_they_are() -> None:
    # Names that are pydantic's own attributes, or not identifiers, are keys like any other.
    dims = ["model_config", "json", "score", "evidence", "with-dash"]
    answer = {name: i for i, name in enumerate(dims)}
    assert validate_scores(answer, dims)[0] == {name: float(i) for i, name in enumerate(dims)}
    model = answer_model(tuple(DIMS))
    assert model is answer_model(tuple(DIMS))  # built once per dimension set
    assert [f.alias for f in model.model_fields.values()] == DIMS


def test_parse_answer_keeps_the_raw_text_on_every_error() -> None:
    assert parse_answer('Sure: {"alpha": 3, "beta": 4, "reasoning": "ok"}', DIMS) == ({"alpha": 3.0, "beta": 4.0},
                                                                                       "ok")
    for text in ('{"alpha": 3}', "no json"):
        with pytest.raises(OracleAnswerError) as info:
            parse_answer(text, DIMS)
        assert info.value.raw == text
