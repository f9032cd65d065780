import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.conftest import toy_texts
from training.exceptions import TrainingDataError, TrainingError
from training.student import (
    HISTORY_NAME,
    EpochEnd,
    ProgressFn,
    StopTraining,
    StudentRecipe,
    TrainProgress,
    train_student,
)

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


def test_continuing_an_adapter_at_lr_0_reproduces_it_and_at_lr_above_0_changes_it(
        tiny_gemma: Path, tmp_path: Path) -> None:
    texts, y = data(8)
    val_texts, vy = data(4, seed=1)
    start = tmp_path / "start"
    first = train_student(texts, y, ["a", "b"], str(tiny_gemma), start, epochs=1, val_texts=val_texts,
                          val_targets=vy, **FAST)
    start_weights = load_file(str(start / "adapter_model.safetensors"))
    starts: list[float] = []
    epoch_ends: list[int] = []

    def checkpoint(end: EpochEnd) -> None:
        epoch_ends.append(end.epoch)
        end.save(tmp_path / f"epoch-{end.epoch}")

    frozen = train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "frozen", epochs=2, lr=0.0,
                           head_lr=0.0, val_texts=val_texts, val_targets=vy, init_adapter=start,
                           on_start=starts.append, on_epoch=checkpoint,
                           **{**FAST, "lora_r": 16, "lora_alpha": 32})
    # The starting weights' predictions are the adapter's: the same MAE its own last validation measured…
    assert starts == [first.best_val_mae] and frozen.history["start_val_mae"] == first.best_val_mae
    # … and learning rates 0 keep them exactly (head bias included: no mean-score initialisation).
    assert [e["val_mae"] for e in frozen.history["epochs"]] == [first.best_val_mae] * 2
    assert epoch_ends == [1, 2] and frozen.history["init_adapter"] == str(start)
    assert frozen.history["recipe"]["lora_r"] == 4   # the adapter's own shape, not the default recipe's 16
    for directory in (tmp_path / "frozen", tmp_path / "epoch-1", tmp_path / "epoch-2"):
        saved = load_file(str(directory / "adapter_model.safetensors"))
        assert saved.keys() == start_weights.keys()
        for key, value in start_weights.items():
            assert (saved[key] == value).all(), (directory, key)

    moved = train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "moved", epochs=1, lr=5e-3,
                          head_lr=5e-2, val_texts=val_texts, val_targets=vy, init_adapter=start, **FAST)
    assert moved.history["epochs"][0]["val_mae"] != first.best_val_mae
    changed = load_file(str(tmp_path / "moved" / "adapter_model.safetensors"))
    assert any(not (changed[k] == start_weights[k]).all() for k in start_weights if "lora_B" in k)
    assert not (changed["base_model.model.score.weight"] == start_weights["base_model.model.score.weight"]).all()


def test_continuing_refuses_a_missing_or_mismatched_adapter(tiny_gemma: Path, tmp_path: Path) -> None:
    texts, y = data(4)
    with pytest.raises(TrainingError, match=r"adapter_config\.json missing"):
        train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "out", init_adapter=tmp_path / "none")
    train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "two", epochs=1, **FAST)
    y3 = np.random.default_rng(0).uniform(0, 10, size=(4, 3))
    with pytest.raises(TrainingError, match="3 dimensions"):
        train_student(texts, y3, ["a", "b", "c"], str(tiny_gemma), tmp_path / "out", epochs=1,
                      init_adapter=tmp_path / "two", **FAST)


def test_a_callback_stops_training_keeping_the_best_or_the_weights_so_far(tiny_gemma: Path, tmp_path: Path) -> None:
    texts, y = data(12)

    def stop_at(phase: str, step: int) -> ProgressFn:
        def progress(p: TrainProgress) -> None:
            if p.phase == phase and p.step >= step:
                raise StopTraining
        return progress

    early = train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "early", epochs=3,
                          progress=stop_at("train", 2), **FAST)
    assert early.stopped and early.best_epoch == 0 and early.history["epochs"] == []
    assert early.history["stopped"]["in_epoch"] == 1 and early.history["stopped"]["step"] == 2
    assert early.best_val_mae == early.history["stopped"]["val_mae"]
    assert (tmp_path / "early" / "adapter_model.safetensors").is_file()

    late = train_student(texts, y, ["a", "b"], str(tiny_gemma), tmp_path / "late", epochs=3,
                         progress=stop_at("train", 4), on_epoch=lambda end: end.save(tmp_path / f"e{end.epoch}"),
                         **FAST)   # 3 steps an epoch: inside epoch 2
    assert late.stopped and [e["epoch"] for e in late.history["epochs"]] == [1] and late.best_epoch == 1
    assert late.history["stopped"] == {"in_epoch": 2, "step": 4}
    # What it kept is epoch 1's adapter, not the weights of the step it stopped at.
    a = load_file(str(tmp_path / "late" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "e1" / "adapter_model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
