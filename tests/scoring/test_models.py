from pathlib import Path

import pytest
import torch

from scoring.exceptions import ModelLoadError
from scoring.models import dtype_for, file_hash, hub_offline, load_error, resolve_model_ref


def test_local_paths_resolve_to_themselves(tmp_path: Path) -> None:
    assert resolve_model_ref(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("alias", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_minilm_aliases_resolve_to_the_installed_package(alias: str, minilm_path: Path) -> None:
    assert Path(resolve_model_ref(alias)) == minilm_path
    assert (minilm_path / "config.json").is_file()


@pytest.mark.parametrize("ref", ["google/gemma-3-1b-pt", "intfloat/multilingual-e5-small"])
def test_other_ids_pass_through(ref: str) -> None:
    assert resolve_model_ref(ref) == ref


def test_dtype_per_device() -> None:
    assert dtype_for("cpu") is torch.float32
    assert dtype_for("cuda") is torch.bfloat16
    assert dtype_for("cuda:1") is torch.bfloat16


def test_offline_follows_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUXSCORE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub_offline()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("FLUXSCORE_OFFLINE", "1")
    assert hub_offline()


def test_load_error_explains_offline_hub_and_missing_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXSCORE_OFFLINE", "1")
    hub = load_error("google/gemma-3-1b-pt", "base model", OSError("no connection"))
    assert isinstance(hub, ModelLoadError)
    assert "google/gemma-3-1b-pt" in str(hub) and "forbid downloading" in str(hub)
    monkeypatch.delenv("FLUXSCORE_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "could not be downloaded" in str(load_error("google/gemma-3-1b-pt", "base model", OSError("x")))
    missing = load_error(str(tmp_path / "nowhere"), "base model", OSError("x"))
    assert "does not exist" in str(missing)
    broken = load_error(str(tmp_path), "base model", ValueError("bad config"))
    assert "could not be read" in str(broken) and "bad config" in str(broken)


def test_file_hash_follows_content_not_location(tmp_path: Path) -> None:
    a = tmp_path / "a" / "model"
    b = tmp_path / "b" / "model"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "w.bin").write_bytes(b"weights")
        (d / "c.json").write_text("{}")
    assert file_hash(a) == file_hash(b)
    assert len(file_hash(a)) == 16
    (b / "w.bin").write_bytes(b"weights2")
    assert file_hash(a) != file_hash(b)
    assert file_hash(a / "w.bin") != file_hash(a / "c.json")
    with pytest.raises(FileNotFoundError):
        file_hash(tmp_path / "missing")
