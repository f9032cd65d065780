"""Labelled data: both layouts, reporting instead of zero-filling, near-duplicates, splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from scoring.package import FilterConfig
from training.dataset import (
    SPLITS,
    deduplicate,
    extract_scores,
    infer_dimensions,
    load_labelled,
    load_split,
    near_duplicate_groups,
    prepare,
    split,
    write_prepared,
)
from training.exceptions import TrainingDataError
from training.synth import SynthConfig, generate, write_jsonl

DIMS = ["wellbeing", "evidence", "reach", "durability"]


def _config(name: str = "demo", dims: list[str] = DIMS) -> FilterConfig:
    return FilterConfig.model_validate({
        "name": name, "version": "1.0.0",
        "dimensions": [{"name": d, "weight": 1 / len(dims), "description": d} for d in dims],
        "stage1": {"embedding_model": "m", "probe": "p.safetensors", "probe_meta": "p.json", "threshold": 3.0},
        "oracle_prompt": "prompt.md"})


def _article(i: int, text: str = "") -> dict[str, object]:
    return {"id": f"a{i}", "title": f"Title {i}", "content": text or f"Body number {i} about things."}


def test_extract_oracle_scores_layout() -> None:
    rec = {**_article(1), "oracle": {"scores": {"wellbeing": 3, "evidence": 4.5, "reach": "6", "durability": 0}}}
    assert extract_scores(rec, DIMS) == ([3.0, 4.5, 6.0, 0.0], "oracle.scores")


@pytest.mark.parametrize("analysis", [
    {"wellbeing": 1, "evidence": 2, "reach": 3, "durability": 4},
    {"wellbeing": {"score": 1, "evidence": "q"}, "evidence": {"score": 2}, "reach": {"score": 3},
     "durability": {"score": 4, "reasoning": "r"}},
    {"dimensions": {"wellbeing": 1, "evidence": {"score": 2}, "reach": 3, "durability": 4}, "overall": 9},
])
def test_extract_analysis_layouts(analysis: dict[str, object]) -> None:
    rec = {**_article(1), "demo_analysis": analysis}
    assert extract_scores(rec, DIMS, "demo") == ([1.0, 2.0, 3.0, 4.0], "demo_analysis")
    # Without the filter name the *_analysis field is still found.
    assert extract_scores(rec, DIMS)[0] == [1.0, 2.0, 3.0, 4.0]


def test_missing_or_bad_scores_are_reported_not_zero_filled() -> None:
    missing = {**_article(1), "oracle": {"scores": {"wellbeing": 3, "evidence": 4}}}
    scores, reason = extract_scores(missing, DIMS)
    assert scores is None and "reach" in reason and "durability" in reason
    bad = {**_article(2), "oracle": {"scores": dict.fromkeys(DIMS, 11)}}
    assert "outside 0-10" in extract_scores(bad, DIMS)[1]
    none = _article(3)
    assert "no labels" in extract_scores(none, DIMS)[1]


def test_load_labelled_skips_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    good = {**_article(1), "oracle": {"scores": dict.fromkeys(DIMS, 5)}}
    lines = [orjson.dumps(good), b"{not json", b"[1, 2]",
             orjson.dumps({**_article(2), "oracle": {"scores": {"wellbeing": 1}}}),
             orjson.dumps({"id": 5, "oracle": {"scores": dict.fromkeys(DIMS, 5)}}), b""]
    path.write_bytes(b"\n".join(lines))
    data = load_labelled(path, DIMS)
    assert data.ids == ["a1"]
    assert data.targets.tolist() == [[5.0] * 4]
    reasons = dict(data.skipped)
    assert "not valid JSON" in reasons["line 2"]
    assert "not a JSON object" in reasons["line 3"]
    assert "missing" in reasons["a2"]
    assert "invalid article" in reasons["line 5"]


def test_infer_dimensions_from_either_layout(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(orjson.dumps({**_article(1), "oracle": {"filter": "seece", "scores": {"a": 1, "b": 2}}}))
    assert infer_dimensions(path) == (["a", "b"], "seece")
    path.write_bytes(orjson.dumps({**_article(1), "tech_analysis": {"x": {"score": 1}, "y": 2}}))
    assert infer_dimensions(path) == (["x", "y"], "tech")
    path.write_bytes(orjson.dumps(_article(1)))
    with pytest.raises(TrainingDataError):
        infer_dimensions(path)


def test_near_duplicates_grouped_unrelated_apart() -> None:
    base = ("The regional council approved a new cycling network that links twelve villages to the "
            "station, after three years of planning and a public consultation with residents. Work starts in "
            "spring and the first paths open next year, the council said. Local shops expect more visitors, "
            "and the bus company will adjust two routes. Critics asked for better lighting on rural stretches, "
            "which the council promised to study before the summer recess.")
    texts = [base, base.replace("twelve", "eleven") + " Updated with reactions.",
             "A completely different story about a football match in the rain and a late goal.",
             base.upper()]
    groups = near_duplicate_groups(texts)
    assert groups[0] == groups[1] == groups[3]
    assert groups[2] != groups[0]



def test_dedup_and_split_keep_twins_together(tmp_path: Path) -> None:
    records = generate(SynthConfig(n=500, seed=11, near_duplicate_fraction=0.08))
    records.append(dict(records[0]))  # a repeated id
    path = tmp_path / "s.jsonl"
    write_jsonl(records, path)
    config = _config()
    data = load_labelled(path, DIMS, filter_name="demo")
    kept, groups, report = deduplicate(data)
    assert report.duplicate_ids == [records[0]["id"]]
    assert report.near_duplicate_groups > 0
    rows = split(kept, groups, config, seed=3)
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(kept)))
    where = {}
    for name, idx in rows.items():
        for i in idx:
            where[kept.ids[i]] = name
    twins = [(r["id"], r["truth"]["near_duplicate_of"]) for r in kept.records if r["truth"]["near_duplicate_of"]]
    assert twins
    for rid, original in twins:
        assert where[rid] == where[original]
    # Tier shares are close to overall shares in every split.
    tiers = kept.tiers(config)
    overall = Counter(t.value for t in tiers)
    train_share = Counter(tiers[i].value for i in rows["train"])
    for tier, count in overall.items():
        assert abs(train_share[tier] / len(rows["train"]) - count / len(kept)) < 0.05


def test_split_by_time_puts_newest_in_test(tmp_path: Path) -> None:
    records = generate(SynthConfig(n=300, seed=12, near_duplicate_fraction=0.0))
    path = tmp_path / "t.jsonl"
    write_jsonl(records, path)
    config = _config()
    data = load_labelled(path, DIMS, filter_name="demo")
    kept, groups, _ = deduplicate(data)
    rows = split(kept, groups, config, by_time=True)
    tiers = kept.tiers(config)
    for tier in set(tiers):
        train = [kept.records[i]["published_date"] for i in rows["train"] if tiers[i] == tier]
        test = [kept.records[i]["published_date"] for i in rows["test"] if tiers[i] == tier]
        if train and test:
            assert max(train) <= min(test)


def test_prepare_write_and_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    write_jsonl(generate(SynthConfig(n=200, seed=13)), path)
    config = _config()
    prepared = prepare(path, config, fractions=(0.6, 0.1, 0.15, 0.15))
    write_prepared(prepared, tmp_path / "splits")
    assert set(prepared.manifest["splits"]) == set(SPLITS)
    total = sum(s["count"] for s in prepared.manifest["splits"].values())
    assert total == prepared.manifest["kept"]
    back = load_split(tmp_path / "splits", "calibration", config)
    assert back.ids == prepared.splits["calibration"].ids
    np.testing.assert_array_equal(back.targets, prepared.splits["calibration"].targets)
    other = _config("demo", ["wellbeing", "evidence", "reach"])
    with pytest.raises(TrainingDataError, match="prepared for dimensions"):
        load_split(tmp_path / "splits", "test", other)


def test_prepare_refuses_too_little_data(tmp_path: Path) -> None:
    path = tmp_path / "few.jsonl"
    write_jsonl([{**_article(i), "oracle": {"scores": {"wellbeing": 1}}} for i in range(30)], path)
    with pytest.raises(TrainingDataError, match="usable labelled records"):
        prepare(path, _config())
    with pytest.raises(TrainingDataError, match="fractions"):
        prepare(path, _config(), fractions=(0.5, 0.5, 0.5, 0.5), min_records=0)


def test_prepare_names_the_dimensions_the_data_lacks(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    rows = [{**_article(i), "oracle": {"scores": {"wellbeing": 1, "evidence": 2, "impact": 3}}} for i in range(25)]
    rows += [{**_article(100 + i), "oracle": {"scores": {"wellbeing": 1, "evidence": 2, "reach": 3, "impact": 4}}}
             for i in range(5)]
    write_jsonl(rows, path)
    with pytest.raises(TrainingDataError) as caught:
        prepare(path, _config())
    message = str(caught.value)
    assert "only 0 usable labelled records" in message and "30 skipped" in message
    assert "reach (25 records)" in message and "durability (30 records)" in message
    assert "wellbeing (" not in message  # carried by every record
    assert "the data carries wellbeing, evidence, impact" in message
    assert "oracle.scores', " not in message  # not the old Counter dump
    assert load_labelled(path, DIMS).missing == Counter({"durability": 30, "reach": 25})
