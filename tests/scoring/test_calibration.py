from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.calibration import Calibration, IsotonicMap
from scoring.exceptions import PackageError

scores = st.floats(min_value=-5.0, max_value=15.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(scores, st.floats(0, 10)), min_size=2, max_size=60),
       probes=st.lists(scores, min_size=2, max_size=20))
def test_fitted_maps_are_monotone_and_bounded(pairs: list[tuple[float, float]], probes: list[float]) -> None:
    x, y = zip(*pairs, strict=True)
    fn = IsotonicMap.fit(x, y)
    out = fn(np.sort(np.asarray(probes)))
    assert np.all(np.diff(out) >= -1e-9)
    assert np.all((out >= 0.0) & (out <= 10.0))


def test_fit_learns_a_shift_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 8, 500)
    target = np.clip(raw + 2.0, 0, 10)
    cal = Calibration(maps={"stage1": {"a": IsotonicMap.fit(raw, target)}}, meta={"fitted_on": "test"})
    path = tmp_path / "calibration.json"
    cal.save(path)
    back = Calibration.load(path)
    values = np.array([[1.0, 1.0], [5.0, 12.0]])
    out = back.apply("stage1", ["a", "b"], values)
    np.testing.assert_allclose(out[:, 0], [3.0, 7.0], atol=0.3)
    np.testing.assert_allclose(out[:, 1], [1.0, 10.0])  # no map: identity, clamped
    np.testing.assert_allclose(back.apply("stage2", ["a", "b"], values), np.clip(values, 0, 10))
    assert back.meta == {"fitted_on": "test"}


@pytest.mark.parametrize(
    "body", [b"{", b'{"maps": {"stage9": {}}}', b'{"maps": {"stage1": {"a": {"x": [2, 1], "y": [0, 1]}}}}'])
def test_invalid_files_are_package_errors(body: bytes) -> None:
    with pytest.raises(PackageError, match="calibration file"):
        Calibration.from_json(body)
