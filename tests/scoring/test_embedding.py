from pathlib import Path

import numpy as np
import pytest

from scoring.embedding import load_embedder
from scoring.exceptions import ModelLoadError
from tests.conftest import toy_texts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder(minilm_path: Path):  # type: ignore[no-untyped-def]
    return load_embedder("all-MiniLM-L6-v2")


def test_equals_sentence_transformers_for_short_texts(embedder) -> None:  # type: ignore[no-untyped-def]
    texts = ["Solar panels got cheaper.", "A long-awaited library opens downtown after years of delay.",
             "x", "Markets fell sharply on Monday as the central bank raised rates again."]
    ours = embedder.encode(texts, head=200, tail=50, batch_size=3)
    reference = embedder.model.encode(texts, convert_to_numpy=True)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert (embedder.dim, embedder.max_length) == (384, 256)


def test_order_and_batch_size_do_not_change_results(embedder) -> None:  # type: ignore[no-untyped-def]
    texts = toy_texts(9, seed=3)
    one = embedder.encode(texts, head=64, tail=16, batch_size=64)
    small = embedder.encode(texts, head=64, tail=16, batch_size=2)
    reversed_ = embedder.encode(texts[::-1], head=64, tail=16, batch_size=4)[::-1]
    np.testing.assert_allclose(one, small, atol=1e-5)
    np.testing.assert_allclose(one, reversed_, atol=1e-5)


def test_long_texts_keep_head_and_tail_within_the_limit(embedder) -> None:  # type: ignore[no-untyped-def]
    opening = "Opening words about the river. "
    ending = " Closing words about the drought."
    long_text = opening + "filler words that repeat. " * 400 + ending
    ids = embedder.token_ids([long_text], head=127, tail=127)[0]
    assert len(ids) == embedder.max_length
    decoded = embedder.tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.startswith("opening words about the river")
    assert decoded.endswith("closing words about the drought.")
    # The head comes first when head + tail exceed the limit.
    assert len(embedder.token_ids([long_text], head=500, tail=500)[0]) == embedder.max_length
    # A lower per-filter limit is honoured; a higher one is capped at the encoder's own.
    assert len(embedder.token_ids([long_text], head=500, tail=500, max_length=64)[0]) == 64
    assert len(embedder.token_ids([long_text], head=500, tail=500, max_length=4096)[0]) == 256
    emb = embedder.encode([long_text], head=100, tail=100)
    assert np.isfinite(emb).all() and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-4
    # The tail matters: a different ending gives a different embedding.
    other = embedder.encode([long_text.replace("drought", "election")], head=100, tail=100)
    assert not np.allclose(emb, other, atol=1e-4)
    head_only = embedder.encode([long_text.replace("drought", "election")], head=200, tail=0)
    np.testing.assert_allclose(head_only, embedder.encode([long_text], head=200, tail=0), atol=1e-6)


def test_loaded_once_per_ref_and_device(embedder) -> None:  # type: ignore[no-untyped-def]
    assert load_embedder("all-MiniLM-L6-v2") is embedder
    assert embedder.encode([], head=10, tail=0).shape == (0, 384)


def test_missing_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXSCORE_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_embedder(str(tmp_path / "no-model") + "/")
    with pytest.raises(ModelLoadError, match="forbid downloading"):
        load_embedder("someone/not-a-cached-model")
