from __future__ import annotations

from scoring.aggregate import Tier
from scoring.records import DimensionScore, FilterRef, PrefilterResult, ScoreRecord, StageUsed
from streams.shadow import compare


def _record(article: str, version: str, value: float, tier: Tier, stage: StageUsed = StageUsed.STAGE1,
            name: str = "demo") -> ScoreRecord:
    return ScoreRecord(article_id=article, filter=FilterRef(name=name, version=version, package_hash=f"h{version}"),
                       model_hashes={}, stage=stage, weighted_average=value, tier=tier,
                       dimensions={"a": DimensionScore(raw=value, calibrated=value)},
                       prefilter=PrefilterResult(passed=True))


def test_compare_pairs_by_article_and_filter() -> None:
    live = [_record("x", "1", 4.5, Tier.MEDIUM), _record("y", "1", 2.0, Tier.LOW),
            _record("x", "1", 3.0, Tier.LOW, name="other")]
    shadow = [_record("x", "2", 6.0, Tier.MEDIUM, StageUsed.STAGE2), _record("y", "2", 2.0, Tier.HIGH),
              _record("z", "2", 1.0, Tier.LOW)]
    got = {c["article_id"]: c for c in compare(live, shadow)}
    assert set(got) == {"x", "y"}, "only pairs scored on both sides"
    x = got["x"]
    assert (x["live"]["version"], x["shadow"]["version"]) == ("1", "2")
    assert x["diff"] == 1.5 and x["abs_diff"] == 1.5 and x["dimension_diff"] == {"a": 1.5}
    assert x["tier_agrees"] and not x["stage_agrees"]
    assert got["y"]["diff"] == 0.0 and not got["y"]["tier_agrees"]
