"""bench.quality's side-by-side table and its verdict on the issue's targets (no data, no models)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from bench import quality


def _result(encoder: str, probe_mae: float, probe_skip: float, orig_skip: float) -> dict[str, Any]:
    def method(mae: float, skip: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"mae": mae, "mae_per_dim": {"a": mae, "b": mae}}
        if skip is not None:
            out.update({"skip_rate": skip, "false_negatives": 1, "positives": 50, "fn_rate": 0.02,
                        "thresholds": [2.0, 2.1]})
        return out

    return {"data": "x.jsonl", "articles": 100, "folds": 5, "head_tokens": 128, "tail_tokens": 64,
            "dimensions": ["a", "b"], "embedding_model": encoder, "target_fnr": 0.02,
            "mae_gain_vs_better_baseline": 1 - probe_mae / 1.0,
            "methods": {quality.PROBE: method(probe_mae, probe_skip), quality.ORIGINAL_OWN: method(1.0, 0.5),
                        quality.ORIGINAL_HELDOUT: method(1.0, orig_skip), quality.MEAN: method(1.2, None)}}


def test_verdict_names_each_target() -> None:
    assert quality.verdict(_result("e5", 0.85, 0.40, 0.30)).count("(met") == 2
    missed = quality.verdict(_result("minilm", 0.95, 0.20, 0.30))
    assert "5.0% below" in missed and missed.count("NOT met") == 2


def test_table_shows_every_encoder_and_method() -> None:
    console = Console(width=400, record=True)
    console.print(quality.table([_result("enc-one", 0.8, 0.4, 0.3), _result("enc-two", 0.9, 0.2, 0.3)]))
    text = console.export_text()
    assert "enc-one" in text and "enc-two" in text
    assert text.count(quality.PROBE) == 2 and text.count(quality.MEAN) == 2
    assert "40.0%" in text and "1/50" in text
    console.print(quality.dimension_table([_result("org/enc-one", 0.8, 0.4, 0.3), _result("enc-two", 0.9, 0.2, 0.3)]))
    text = console.export_text()
    assert "enc-one probe" in text and "enc-two mean" in text and "org/" not in text
