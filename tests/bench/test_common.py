"""Committed benchmark results name no machine's folders."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench import common
from bench.common import RESULTS_DIR, portable, save


def test_paths_inside_the_repository_are_saved_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = common.REPO
    assert portable(repo / "scoring" / "data" / "a.jsonl") == "scoring/data/a.jsonl"
    assert portable("/elsewhere/b.jsonl") == "/elsewhere/b.jsonl"
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    saved = save("t", [], {"data": str(repo / "scoring" / "data" / "a.jsonl"), "filters": "demo"})
    assert orjson.loads(saved.read_bytes())["meta"] == {"data": "scoring/data/a.jsonl", "filters": "demo"}


def test_no_committed_result_names_an_absolute_path() -> None:
    for path in RESULTS_DIR.glob("*.json"):
        meta = orjson.loads(path.read_bytes()).get("meta", {})
        assert not any(isinstance(v, str) and v.startswith("/") for v in meta.values()), path.name
