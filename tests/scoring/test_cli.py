"""``fluxscore score`` on hostile input: every line ends scored or rejected with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from scoring import cli
from scoring.pipeline import Pipeline
from tests.hostile import DEEPEST, nest, valid_record

pytestmark = pytest.mark.integration


def _app() -> typer.Typer:
    app = typer.Typer()
    cli.register(app)
    return app


def _score(tmp_path: Path, lines: list[bytes]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(_app(), ["score", str(src), "-o", str(out), "--filters", "demo,demo_tech"],
                                env={"FLUXSCORE_DEVICE": "cpu"})
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []
    rejects_file = tmp_path / "out.rejects.jsonl"
    rejects = [orjson.loads(line) for line in rejects_file.read_bytes().splitlines()] if rejects_file.exists() else []
    return result, records, rejects


def test_poison_lines_are_rejected_and_the_valid_lines_scored(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(valid_record(0)),
        json.dumps({"id": "deep", "content": "c", "metadata": nest(1, 300, as_list=False)}).encode(),
        json.dumps({"id": "sur\ud800", "metadata": nest("\udc00", 500, as_list=True)}).encode(),
        DEEPEST,
        orjson.dumps({"id": "\u200b", "content": "c"}),
        b"\xff not json",
        orjson.dumps({"id": "huge", "content": "x" * 950_000}),
        orjson.dumps(valid_record(1)),
    ]
    result, records, rejects = _score(tmp_path, lines)
    assert result.exit_code == 0, result.output
    assert {r["article_id"] for r in records} == {"ok-0", "ok-1"}
    assert len(records) == 4, "both filters scored both valid lines"
    assert sorted(r["line"] for r in rejects) == [2, 3, 4, 5, 6, 7]
    by_line = {r["line"]: r for r in rejects}
    assert "nested deeper than 32 levels" in by_line[2]["message"]
    assert "must not be blank" in by_line[5]["message"]
    assert "above the limit" in by_line[7]["message"]
    assert all(r["error"] == "ArticleValidationError" for r in rejects)


def test_an_article_that_breaks_scoring_is_rejected_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Pipeline.score

    def score(self: Pipeline, articles: list[Any]) -> Any:
        # Stands in for a bug that one input triggers deep inside a stage.
        if any(a.id == "ok-1" for a in articles):
            raise RecursionError("maximum recursion depth exceeded")
        return real(self, articles)

    monkeypatch.setattr(Pipeline, "score", score)
    result, records, rejects = _score(tmp_path, [orjson.dumps(valid_record(i)) for i in range(3)])
    assert result.exit_code == 0, result.output
    assert {r["article_id"] for r in records} == {"ok-0", "ok-2"}
    (reject,) = rejects
    assert (reject["line"], reject["error"]) == (2, "RecursionError")
    assert orjson.loads(reject["raw"])["id"] == "ok-1", "the line is kept verbatim"
