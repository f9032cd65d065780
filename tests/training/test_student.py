import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.conftest import toy_texts
from training.exceptions import TrainingDataError
from training.student import HISTORY_NAME, StudentRecipe, TrainProgress, train_student

pytestmark = pytest.mark.integration

FAST = {"batch_size": 4, "lora_r": 4, "lora_alpha": 8, "head_tokens": 48, "tail_tokens": 8, "max_length": 64}


def data(n: int = 12, dims: int = 2, seed: int = 0) -> tuple[list[str], np.ndarray]:
    return toy_texts(n, seed=seed), np.random.default_rng(seed).uniform(0, 10, size=(n, dims))


def test_trains_saves_best_adapter_and_history(tiny_gemma: Path, tmp_path: Path) -> None:
    texts, y = data()
    events: list[TrainProgress] = []
    result = train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "adapter", epochs=3,
                           progress=events.append, **FAST)
    adapter = tmp_path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["r"] == 4
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights["base_model.model.score.weight"].shape == (2, 64)
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in weights.items())
    history = json.loads((adapter / HISTORY_NAME).read_text())
    assert history == json.loads(json.dumps(result.history))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert history["best_val_mae"] == min(e["val_mae"] for e in history["epochs"])
    assert result.best_epoch == history["best_epoch"]
    # The adapter on disk is the last epoch that improved, i.e. the best one.
    saved = [e["epoch"] for e in history["epochs"] if e["saved"]]
    assert saved[-1] == history["best_epoch"]
    assert history["n_train"] + history["n_val"] == 12 and history["n_val"] == 1
    assert set(history["best_val_mae_per_dim"]) == {"a", "b"}
    train_steps = [e.step for e in events if e.phase == "train"]
    # One report per optimiser step and one per epoch's validation; the run's size is known from the first.
    assert train_steps == list(range(1, 10)) and {e.steps for e in events} == {9}
    assert all(e.loss is not None for e in events)
    assert [e.epoch for e in events if e.phase == "val"] == [1, 2, 3]


def test_same_seed_gives_the_same_adapter(tiny_gemma: Path, tmp_path: Path) -> None:
    texts, y = data(8)
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / name, epochs=1, seed=seed, **FAST)
        runs.append(load_file(str(tmp_path / name / "adapter_model.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert (runs[0][key] == runs[1][key]).all(), key
    assert any(not (runs[0][k] == runs[2][k]).all() for k in runs[0])


def test_explicit_validation_weights_and_recipe(tiny_gemma: Path, tmp_path: Path) -> None:
    texts, y = data(8)
    recipe = StudentRecipe(epochs=1, target_modules=("q_proj",), **FAST)
    weights = np.r_[np.ones(4), np.zeros(4)]
    a = train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "a", recipe=recipe,
                      val_texts=texts[:3], val_targets=y[:3], sample_weights=weights,
                      history_path=tmp_path / "hist.json")
    assert a.history_path == tmp_path / "hist.json" and a.history["n_val"] == 3 and a.history["n_train"] == 8
    assert a.history["recipe"]["target_modules"] == ["q_proj"]
    b = train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "b", recipe=recipe,
                      val_texts=texts[:3], val_targets=y[:3])
    assert b.history_path == tmp_path / "b" / HISTORY_NAME
    wa = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert not all((wa[k] == wb[k]).all() for k in wa)


def test_bad_inputs_are_rejected(tiny_gemma: Path, tmp_path: Path) -> None:
    texts, y = data(4)
    base = str(tiny_gemma)
    with pytest.raises(TrainingDataError, match="expected"):
        train_student(texts, y[:3], ["a", "b"], base, tmp_path)
    with pytest.raises(TrainingDataError, match="0-10"):
        train_student(texts, y * 3, ["a", "b"], base, tmp_path)
    with pytest.raises(TrainingDataError, match="sample weights"):
        train_student(texts, y, ["a", "b"], base, tmp_path, sample_weights=[1, 1, -1, 1])
    with pytest.raises(TrainingDataError, match="both"):
        train_student(texts, y, ["a", "b"], base, tmp_path, val_texts=texts)
    with pytest.raises(TypeError, match="unknown student recipe"):
        train_student(texts, y, ["a", "b"], base, tmp_path, epoch=1)


def test_training_reads_only_the_head_and_the_tail(tiny_gemma: Path, tmp_path: Path) -> None:
    """Texts that differ only between the head and the tail train the same adapter, as serving cuts them."""
    words = ["solar", "wind", "bank", "river", "library", "battery", "drought", "vaccine", "football", "startup"]

    def text(middle_seed: int, tail: str = "and so the article ends with this last long sentence") -> str:
        middle = " ".join(np.random.default_rng(middle_seed).choice(words, 200))
        return f"Headline about a wind farm, and then many more words at the start of this article. {middle} {tail}"

    y = np.random.default_rng(3).uniform(0, 10, size=(6, 2))
    recipe = {**FAST, "head_tokens": 16, "tail_tokens": 8, "max_length": 32, "epochs": 1}
    runs = {}
    for name, texts in (("a", [text(i) for i in range(6)]), ("b", [text(100 + i) for i in range(6)]),
                        ("tail", [text(i, tail=f"and so the article ends with sentence {i}") for i in range(6)])):
        train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / name, seed=1, **recipe)
        runs[name] = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    for key in runs["a"]:
        assert (runs["a"][key] == runs["b"][key]).all(), key
    assert any(not (runs["a"][k] == runs["tail"][k]).all() for k in runs["a"])
