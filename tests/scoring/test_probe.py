import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scoring.exceptions import ModelFilesMissingError, ModelLoadError, PackageError, ScoringError
from scoring.probe import Probe, ProbeNet


def random_probe(input_dim: int = 12, hidden: tuple[int, ...] = (8, 5), n_dims: int = 3) -> Probe:
    torch.manual_seed(1)
    net = ProbeNet(input_dim, hidden, n_dims, dropout=0.3)
    with torch.no_grad():
        net.input_mean.copy_(torch.randn(input_dim))
        net.input_std.copy_(torch.rand(input_dim) + 0.5)
        net.layers[-1].bias.fill_(5.0)
    return Probe(net, dimensions=["a", "b", "c"][:n_dims], embedding_model="all-MiniLM-L6-v2",
                 input_dim=input_dim, hidden=hidden, dropout=0.3, training={"n_train": 10})


def test_save_load_round_trip_is_identical(tmp_path: Path) -> None:
    probe = random_probe()
    x = np.random.default_rng(0).normal(size=(20, 12)).astype(np.float32)
    probe.save(tmp_path / "probe.safetensors", tmp_path / "probe.json")
    loaded = Probe.load(tmp_path / "probe.safetensors", tmp_path / "probe.json")
    np.testing.assert_array_equal(probe.predict(x), loaded.predict(x))
    assert loaded.dimensions == ["a", "b", "c"]
    assert (loaded.embedding_model, loaded.input_dim, loaded.hidden) == ("all-MiniLM-L6-v2", 12, [8, 5])
    assert loaded.training == {"n_train": 10}
    meta = json.loads((tmp_path / "probe.json").read_text())
    assert len(meta["input_mean"]) == 12 and meta["output_clamp"] == [0.0, 10.0]


def test_predict_is_float64_clamped_and_deterministic() -> None:
    probe = random_probe()
    x = np.random.default_rng(1).normal(scale=50, size=(64, 12)).astype(np.float32)
    out = probe.predict(x)
    assert out.shape == (64, 3) and out.dtype == np.float64
    assert out.min() >= 0.0 and out.max() <= 10.0
    assert (out == 0.0).any() or (out == 10.0).any()  # large inputs reach the clamp
    np.testing.assert_array_equal(out, probe.predict(x))  # dropout is off at inference
    assert probe.predict(np.zeros((0, 12))).shape == (0, 3)


def test_wrong_embedding_width_is_a_scoring_error() -> None:
    with pytest.raises(ScoringError, match=r"shape \(n, 12\)"):
        random_probe().predict(np.zeros((2, 384), dtype=np.float32))


def test_missing_files_name_the_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesMissingError) as info:
        Probe.load(tmp_path / "probe.safetensors", tmp_path / "probe.json")
    assert len(info.value.missing) == 2


def test_bad_metadata_is_a_package_error(tmp_path: Path) -> None:
    probe = random_probe()
    probe.save(tmp_path / "p.safetensors", tmp_path / "p.json")
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        Probe.load(tmp_path / "p.safetensors", tmp_path / "p.json")
    (tmp_path / "p.json").write_text(json.dumps({"dimensions": ["a"]}))
    with pytest.raises(PackageError, match="input_dim"):
        Probe.load(tmp_path / "p.safetensors", tmp_path / "p.json")


def test_weights_that_do_not_match_the_metadata_fail_to_load(tmp_path: Path) -> None:
    random_probe().save(tmp_path / "p.safetensors", tmp_path / "p.json")
    meta = json.loads((tmp_path / "p.json").read_text())
    meta["hidden"] = [16]
    (tmp_path / "p.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="do not match"):
        Probe.load(tmp_path / "p.safetensors", tmp_path / "p.json")
