from pathlib import Path

import numpy as np
import pytest

from scoring.embcache import DiskEmbeddingStore
from scoring.embedding import Embedder, encode_cached, load_embedder
from scoring.probe import Probe
from training.exceptions import TrainingDataError
from training.probe import ProbeRecipe, split_indices, train_probe


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings with a low-dimensional signal that decides two scores, plus label noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    mix = np.random.default_rng(99).normal(size=(4, 32))
    x = (z @ mix + 0.3 * rng.normal(size=(n, 32))).astype(np.float32)
    y = np.stack([5 + 2 * np.tanh(z[:, 0]), 5 + 1.5 * z[:, 1] - 0.5 * z[:, 2]], axis=1)
    return x, np.clip(y + rng.normal(scale=0.3, size=y.shape), 0, 10)


def test_learns_a_signal_and_stops_early(tmp_path: Path) -> None:
    x, y = synthetic(300, 0)
    xt, yt = synthetic(500, 1)
    probe, history = train_probe(x, y, ["a", "b"], "toy-encoder", max_epochs=300, patience=15)
    mae = float(np.abs(probe.predict(xt) - yt).mean())
    baseline = float(np.abs(yt - y.mean(axis=0)).mean())
    assert mae < 0.6 * baseline
    assert history["epochs_run"] < 300
    assert history["epochs_run"] == len(history["train_loss"]) == len(history["val_mae"])
    assert history["best_val_mae"] == min(history["val_mae"])
    assert set(history["val_mae_per_dim"]) == {"a", "b"}
    assert history["n_train"] + history["n_val"] == 300
    probe.save(tmp_path / "p.safetensors", tmp_path / "p.json")
    again = Probe.load(tmp_path / "p.safetensors", tmp_path / "p.json")
    np.testing.assert_array_equal(again.predict(xt), probe.predict(xt))
    assert again.training["best_epoch"] == history["best_epoch"]


def test_same_seed_same_probe_other_seed_other_probe() -> None:
    x, y = synthetic(80, 2)
    a, _ = train_probe(x, y, ["a", "b"], "m", max_epochs=20, seed=3)
    b, _ = train_probe(x, y, ["a", "b"], "m", max_epochs=20, seed=3)
    c, _ = train_probe(x, y, ["a", "b"], "m", max_epochs=20, seed=4)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert not np.array_equal(a.predict(x), c.predict(x))


def test_recipe_fields_are_used() -> None:
    x, y = synthetic(60, 3)
    recipe = ProbeRecipe(hidden=(16, 8), dropout=0.0, loss="l1", max_epochs=5, patience=100)
    probe, history = train_probe(x, y, ["a", "b"], "m", recipe=recipe, val_embeddings=x[:10], val_targets=y[:10])
    assert probe.hidden == [16, 8] and history["epochs_run"] == 5 and history["n_val"] == 10
    assert history["recipe"]["loss"] == "l1"
    with pytest.raises(TypeError, match="unknown probe recipe"):
        train_probe(x, y, ["a", "b"], "m", hiddn=(3,))


def test_sample_weights_change_the_fit() -> None:
    x, y = synthetic(60, 4)
    w = np.ones(60)
    w[:30] = 0.0
    a, _ = train_probe(x, y, ["a", "b"], "m", max_epochs=10, sample_weights=w)
    b, _ = train_probe(x, y, ["a", "b"], "m", max_epochs=10)
    assert not np.allclose(a.predict(x), b.predict(x))


@pytest.mark.parametrize(("x", "y", "message"), [
    (np.zeros((5, 4)), np.zeros((4, 2)), "5 embeddings but 4 targets"),
    (np.zeros((5, 4)), np.zeros((5, 3)), "3 columns for 2 dimensions"),
    (np.zeros((5, 4)), np.full((5, 2), 11.0), "0-10"),
    (np.full((5, 4), np.nan), np.zeros((5, 2)), "NaN"),
])
def test_bad_training_data_is_rejected(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        train_probe(x, y, ["a", "b"], "m")


def test_split_is_seeded_and_disjoint() -> None:
    tr, va = split_indices(20, 0.25, seed=1)
    assert len(va) == 5 and not set(tr) & set(va) and len(set(tr) | set(va)) == 20
    np.testing.assert_array_equal(va, split_indices(20, 0.25, seed=1)[1])
    with pytest.raises(TrainingDataError):
        split_indices(1, 0.5, seed=0)


class CountingEmbedder(Embedder):
    """The real encoder, counting how many texts it actually encodes."""

    encoded = 0

    def encode(self, texts, **kwargs):  # type: ignore[no-untyped-def,override]
        self.encoded += len(texts)
        return super().encode(texts, **kwargs)


@pytest.mark.integration
def test_embedding_cache_encodes_each_text_once(tmp_path: Path, minilm_path: Path) -> None:
    real = load_embedder("all-MiniLM-L6-v2")
    embedder = CountingEmbedder(real.model, real.model_ref)
    texts = ["First article.", "Second article.", "First article."]
    cache = DiskEmbeddingStore(tmp_path / "cache")
    first = encode_cached(embedder, texts, cache, head=64, tail=0)
    assert embedder.encoded == 2  # the repeated text is encoded once
    np.testing.assert_allclose(first, real.encode(texts, head=64, tail=0), atol=1e-6)
    # A fresh cache object on the same directory finds everything on disk.
    reopened = DiskEmbeddingStore(tmp_path / "cache")
    again = encode_cached(embedder, [*texts, "Third article."], reopened, head=64, tail=0)
    assert embedder.encoded == 3 and len(reopened) == 3
    np.testing.assert_array_equal(again[:3], first)
    # Other truncation settings are other keys.
    encode_cached(embedder, texts[:1], reopened, head=32, tail=8)
    assert embedder.encoded == 4
    assert all(p.suffix == ".safetensors" for p in (tmp_path / "cache").iterdir())
