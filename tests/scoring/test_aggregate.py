from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from scoring.aggregate import PercentileNormalizer, Tier, aggregate, tier_of
from scoring.package import FilterConfig

from .conftest import filter_config

CONFIG = FilterConfig.model_validate(filter_config())
score = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


def test_weighted_average_and_tier() -> None:
    agg = aggregate(CONFIG, {"impact": 8.0, "evidence": 8.0, "reach": 5.0})
    assert agg.weighted_average == 7.4 and agg.tier is Tier.HIGH and not agg.gatekeeper_applied


def test_gatekeeper_caps() -> None:
    agg = aggregate(CONFIG, [10.0, 2.0, 10.0])
    assert agg.gatekeeper_applied and agg.gatekeeper_dimension == "evidence"
    assert agg.weighted_average == 3.0 and agg.uncapped_average == 7.6 and agg.tier is Tier.LOW


@given(st.tuples(score, score, score))
def test_gatekeeper_never_raises_the_score(values: tuple[float, float, float]) -> None:
    agg = aggregate(CONFIG, list(values))
    assert agg.weighted_average <= agg.uncapped_average + 1e-4
    if values[1] < 3.0:
        assert agg.weighted_average <= 3.0
    else:
        assert not agg.gatekeeper_applied


@given(score, score)
def test_tiers_are_monotone(a: float, b: float) -> None:
    order = {Tier.LOW: 0, Tier.MEDIUM: 1, Tier.HIGH: 2}
    lo, hi = sorted((a, b))
    assert order[tier_of(CONFIG, lo)] <= order[tier_of(CONFIG, hi)]
    assert tier_of(CONFIG, 7.0) is Tier.HIGH
    assert tier_of(CONFIG, 6.999) is Tier.MEDIUM
    assert tier_of(CONFIG, 4.0) is Tier.MEDIUM


def test_percentile_normaliser(tmp_path: Path) -> None:
    norm = PercentileNormalizer(reference=(1.0, 2.0, 3.0, 4.0))
    assert norm(0.5) == 0.0 and norm(2.0) == 50.0 and norm(9.0) == 100.0
    path = tmp_path / "norm.json"
    norm.save(path)
    assert PercentileNormalizer.load(path) == norm
