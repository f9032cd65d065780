"""``fluxscore score`` on hostile input: every line ends scored or rejected with its reason."""

from __future__ import annotations

import errno
import io
import json
import re
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


def test_the_progress_counts_articles_and_labels_their_rate(tmp_path: Path) -> None:
    result, records, _ = _score(tmp_path, [orjson.dumps(valid_record(i)) for i in range(3)] + [b"not json"])
    assert result.exit_code == 0, result.output
    assert "3 articles scored, 1 rejected" in result.output
    assert "articles/s" in result.output and "art/s" not in result.output.replace("articles/s", "")
    assert len(records) == 6


def test_nothing_scored_exits_4_with_its_reason(tmp_path: Path) -> None:
    result, records, rejects = _score(tmp_path, [b"not json", orjson.dumps({"id": "x"})[:-1]])
    assert result.exit_code == 4, result.output
    assert records == [] and len(rejects) == 2
    assert "nothing could be scored: all 2 lines were rejected" in result.output


def test_an_output_problem_names_the_output_not_the_input(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(valid_record(0)) + b"\n")
    missing = tmp_path / "missing" / "dir" / "out.jsonl"
    result = CliRunner().invoke(_app(), ["score", str(src), "-o", str(missing)], env={"FLUXSCORE_DEVICE": "cpu"})
    assert result.exit_code == 2, result.output
    assert f"cannot write the output file {missing}" in result.output
    assert "cannot read" not in result.output
    rejects = tmp_path / "missing" / "r.jsonl"
    result = CliRunner().invoke(_app(), ["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--rejects",
                                         str(rejects)], env={"FLUXSCORE_DEVICE": "cpu"})
    assert result.exit_code == 2 and f"cannot write the rejects file {rejects}" in result.output


def test_a_write_error_while_scoring_names_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Full(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    real_init = cli._Sink.__init__

    def init(self: Any, path: Path, what: str) -> None:
        # A disk that fills up while records are written: the output is to blame, not the input.
        real_init(self, path, what)
        self._fh.close()
        self._fh = Full()

    monkeypatch.setattr(cli._Sink, "__init__", init)
    result, _, _ = _score(tmp_path, [orjson.dumps(valid_record(0))])
    assert result.exit_code == 2, result.output
    assert f"cannot write the output file {tmp_path / 'out.jsonl'}: No space left on device" in result.output
    assert "cannot read" not in result.output


def test_filter_errors_keep_their_bracketed_context(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(valid_record(0)) + b"\n")
    result = CliRunner().invoke(_app(), ["score", str(src), "-o", str(tmp_path / "o.jsonl"), "-f", "nosuch"])
    assert result.exit_code == 3, result.output
    assert "[filter=nosuch]" in result.output, "rich must not read the context as markup"


def test_default_rejects_file_is_the_output_name_with_rejects_before_jsonl() -> None:
    assert cli.default_rejects(Path("d/scores.jsonl")) == Path("d/scores.rejects.jsonl")
    assert cli.default_rejects(Path("d/scores.out")) == Path("d/scores.out.rejects.jsonl")


def test_help_documents_the_exit_codes_whole_at_80_columns() -> None:
    result = CliRunner().invoke(_app(), ["score", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    for line in ("0  articles were scored", "1  scoring failed", "2  the input cannot be read",
                 "3  the filters could not be loaded", "4  nothing could be scored"):
        assert line in result.output
    assert "…" not in result.output


def _names() -> list[str]:
    from scoring.package import available

    return sorted(available())


def test_filters_list_not_a_terminal_prints_every_row_whole_on_one_line() -> None:
    result = CliRunner().invoke(_app(), ["filters", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and "\x1b[" not in result.output, "no ellipsis, no colour codes in a pipe"
    rows = [line.split("│") for line in result.output.splitlines() if line.count("│") > 5]
    assert sorted({row[1].strip() for row in rows}) == _names(), "one line per package, every name whole"


@pytest.mark.parametrize("columns", [80, 60])
def test_filters_list_in_a_narrow_terminal_keeps_every_name_whole(columns: int) -> None:
    result = CliRunner().invoke(_app(), ["filters", "list"], env={"COLUMNS": str(columns), "TTY_COMPATIBLE": "1"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    lines = text.splitlines()
    assert "…" not in text
    assert all(len(line.rstrip()) <= columns for line in lines)
    for name in _names():
        assert name in lines, f"{name} on a line of its own, whole"
    assert any(line.strip().startswith("package_hash") for line in lines)


def test_filters_list_in_a_wide_terminal_is_a_table() -> None:
    result = CliRunner().invoke(_app(), ["filters", "list"], env={"COLUMNS": "250", "TTY_COMPATIBLE": "1"})
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    assert "…" not in text
    rows = {line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 5}
    assert rows == set(_names())


def test_settings_shows_the_values_in_effect_and_masks_secrets() -> None:
    secret = "s3cret-" + "x" * 40
    result = CliRunner().invoke(_app(), ["settings"], env={"FLUXSCORE_STAGE1_BATCH": "12",
                                                            "FLUXSCORE_ANNOTATE_SESSION_SECRET": secret})
    assert result.exit_code == 0, result.output
    assert "FLUXSCORE_STAGE1_BATCH\t12\t" in result.output
    assert secret not in result.output and "FLUXSCORE_ANNOTATE_SESSION_SECRET\t********" in result.output
    table = CliRunner().invoke(_app(), ["settings", "--markdown"])
    assert table.output.startswith("| variable | default | meaning |")


def test_commerce_blocks_carry_score_and_reason_and_are_counted(tmp_path: Path) -> None:
    deal = {"id": "deal-1", "title": "Cordless drill drops to $89 at Amazon, its lowest price ever",
            "content": "Save 40% on the cordless drill today: was $149, now $89. Buy now at Amazon before the deal "
                       "ends. We may earn a commission when you buy through links on this page."}
    news = {"id": "news-1", "title": "Carmaker unveils a small electric car priced at $27,500",
            "content": "The company presented the car in Detroit on Monday. It will cost $27,500 and reach dealers "
                       "in spring; the union welcomed the decision to build it at the Ohio plant."}
    result, records, _ = _score(tmp_path, [orjson.dumps(deal), orjson.dumps(news)])
    assert result.exit_code == 0, result.output
    blocked = [r for r in records if r["article_id"] == "deal-1"]
    assert len(blocked) == 2 and all(r["stage"] == "commerce" for r in blocked)
    for record in blocked:
        assert record["commerce"]["blocked"] is True and record["commerce"]["score"] >= 0.5
        assert record["commerce"]["reason"].startswith("commerce:") and "affiliate" in record["commerce"]["reason"]
    assert all(r["stage"] != "commerce" for r in records if r["article_id"] == "news-1")
    assert "(2 blocked as commerce)" in " ".join(result.output.split())


def test_filters_list_says_which_packages_block_commerce() -> None:
    result = CliRunner().invoke(_app(), ["filters", "list"], env={"COLUMNS": "250", "TTY_COMPATIBLE": "1"})
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    header = next(line for line in text.splitlines() if "package_hash" in line)
    column = [c.strip() for c in header.split("┃")].index("commerce")
    rows = {line.split("│")[1].strip(): line.split("│")[column].strip()
            for line in text.splitlines() if line.count("│") > 5}
    assert rows["demo"] == "blocks"
    assert set(rows.values()) <= {"blocks", "passes", "-"}
