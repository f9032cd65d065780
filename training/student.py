"""Stage-2 student training: LoRA fine-tuning of a sequence-regression head on any transformers base
(a hub id, a local directory, or a GGUF base such as ``gguf:gemma3-270m-q4-k-m``, converted once into the
user's cache by :mod:`scoring.gguf`; all through :func:`scoring.student.load_base`, as serving loads it).

A plain torch loop (the Trainer adds little for one regression head and hides the per-sample weights):
MSE loss with optional sample weights, validation MAE after every epoch, and the adapter of the best
epoch kept on disk. Training starts from a fresh LoRA or continues an existing adapter (``init_adapter``:
its LoRA weights and head, trainable), which is how ``fluxscore evolve``'s curriculum and feedback
initiatives go on from an adapter; a progress callback may end a run early (:class:`StopTraining`).
The adapter is a standard peft SEQ_CLS adapter (LoRA weights + the head, saved through ``modules_to_save``),
so it loads with ``PeftModel.from_pretrained`` as well as through :class:`scoring.student.StudentPool`.
Inputs are cut exactly as serving cuts them (:func:`scoring.text.encode_head_tail`, right padding), so the
model trains on what it will see.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoring.models import pad_batch
from scoring.student import ADAPTER_CONFIG, head_name, load_base, model_max_length
from scoring.text import encode_head_tail
from training.exceptions import TrainingDataError, TrainingError

HISTORY_NAME = "training_history.json"

# LoRA targets per architecture: attention projections (+ BERT's dense layers, which on a 6-layer
# MiniLM are where most of the capacity is). Unknown architectures get peft's own choice.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "bert": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
}


@dataclass(frozen=True)
class StudentRecipe:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: DEFAULT_TARGETS for the architecture
    head_tokens: int = 256
    tail_tokens: int = 0
    max_length: int = 512
    epochs: int = 3
    lr: float = 2e-4
    head_lr: float = 1e-3  # the head starts from scratch and needs larger steps than LoRA deltas
    weight_decay: float = 0.0
    warmup_fraction: float = 0.06
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    val_fraction: float = 0.1
    eval_batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class TrainProgress:
    """One progress report: after every optimiser step (phase ``train``; with ``grad_accum`` k, every k
    batches) and after each epoch's validation (``val``), so a caller hears at least once per step."""

    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    val_mae: float | None = None


ProgressFn = Callable[[TrainProgress], None]


class StopTraining(Exception):  # not a FluxscoreError: control flow the caller asks for, not a failure
    """Raised by a progress callback to end training where it is (e.g. a share of a budget is spent).

    :func:`train_student` then returns normally: the best validated epoch is on disk, or, when it stopped
    before the first validation, the weights as they were, validated then (``StudentResult.stopped``)."""


@dataclass(frozen=True)
class EpochEnd:
    """What ``on_epoch`` hears after each epoch's validation: the epoch's history record, and ``save`` to
    write the adapter as it is now (not necessarily the best) into a directory, e.g. a per-epoch checkpoint."""

    epoch: int
    record: dict[str, Any]
    save: Callable[[str | Path], None]


EpochFn = Callable[[EpochEnd], None]


@dataclass
class StudentResult:
    adapter_dir: Path
    history_path: Path
    best_epoch: int  # 0: stopped before the first epoch's validation
    best_val_mae: float
    history: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # a callback raised StopTraining


def _as_targets(targets: Any, n: int, dims: Sequence[str], what: str) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float32)
    if y.shape != (n, len(dims)):
        raise TrainingDataError(f"{what}: targets have shape {y.shape}, expected ({n}, {len(dims)}) for "
                                f"dimensions {list(dims)}", step="student")
    if not np.isfinite(y).all() or y.min() < 0 or y.max() > 10:
        raise TrainingDataError(f"{what}: targets must be finite scores in 0-10", step="student")
    return y


def train_student(texts: Sequence[str], targets: Any, dimensions: Sequence[str], base_model: str,
                  out_dir: str | Path, *, recipe: StudentRecipe | None = None,
                  sample_weights: Any = None, val_texts: Sequence[str] | None = None,
                  val_targets: Any = None, device: str = "cpu", progress: ProgressFn | None = None,
                  history_path: str | Path | None = None, init_adapter: str | Path | None = None,
                  on_epoch: EpochFn | None = None, on_start: Callable[[float], None] | None = None,
                  **overrides: Any) -> StudentResult:
    """Fine-tune LoRA + a regression head; the best-validation-MAE adapter ends up in ``out_dir``.

    ``texts`` are prepared article texts (:func:`scoring.text.article_text`), ``targets`` (n, n_dims)
    oracle scores on 0-10. Keyword ``overrides`` replace recipe fields (``epochs=1``, ``lora_r=8``…).
    The history JSON goes to ``history_path`` (default ``out_dir/training_history.json``).

    ``init_adapter``: a peft SEQ_CLS adapter directory on the same base and dimensions to continue (its LoRA
    weights and head, trainable; the recipe's LoRA shape fields are then the adapter's own and the head
    keeps its bias). The learning-rate schedule (warm-up, linear decay) always spans this call's epochs.
    ``on_epoch`` hears every epoch's end (:class:`EpochEnd`); ``on_start``, when given, gets the validation
    MAE of the starting weights before the first step (the history keeps it as ``start_val_mae``).
    """
    recipe = recipe or StudentRecipe()
    if overrides:
        unknown = set(overrides) - set(StudentRecipe.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown student recipe fields: {sorted(unknown)}")
        recipe = StudentRecipe(**{**asdict(recipe), **overrides})
    dims = list(dimensions)
    texts = list(texts)
    y = _as_targets(targets, len(texts), dims, "training data")
    w = np.ones(len(texts), dtype=np.float32) if sample_weights is None else np.asarray(
        sample_weights, dtype=np.float32)
    if w.shape != (len(texts),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise TrainingDataError("sample weights must be one non-negative number per text, positive sum",
                                step="student")
    if (val_texts is None) != (val_targets is None):
        raise TrainingDataError("give both val_texts and val_targets, or neither", step="student")
    if val_texts is not None:
        v_texts = list(val_texts)
        vy = _as_targets(val_targets, len(v_texts), dims, "validation data")
        t_texts, ty, tw = texts, y, w
    else:
        if len(texts) < 2:
            raise TrainingDataError(f"need at least 2 texts to hold out validation, got {len(texts)}",
                                    step="student")
        n_val = min(len(texts) - 1, max(1, round(len(texts) * recipe.val_fraction)))
        order = np.random.default_rng(recipe.seed).permutation(len(texts))
        tr, va = np.sort(order[n_val:]), np.sort(order[:n_val])
        t_texts, ty, tw = [texts[i] for i in tr], y[tr], w[tr]
        v_texts, vy = [texts[i] for i in va], y[va]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hist_file = Path(history_path) if history_path is not None else out / HISTORY_NAME
    started = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model, tokenizer, pad_id, limit = _build(base_model, dims, recipe, ty, tw, device, init_adapter)
        train_ids = encode_head_tail(tokenizer, t_texts, head=recipe.head_tokens, tail=recipe.tail_tokens,
                                     max_length=limit)
        val_ids = encode_head_tail(tokenizer, v_texts, head=recipe.head_tokens, tail=recipe.tail_tokens,
                                   max_length=limit)
        start_val: dict[str, Any] | None = None
        if on_start is not None:
            start_val = _validate(model, val_ids, vy, dims, pad_id, device, recipe.eval_batch_size)
            on_start(start_val["val_mae"])
        epochs, stopped = _loop(model, recipe, train_ids, ty, tw, val_ids, vy, dims, pad_id, device, out,
                                progress, on_epoch)
    # No validated epoch only when it stopped before the first one; then ``stopped`` holds the validation.
    best = min(epochs, key=lambda e: (e["val_mae"], e["epoch"])) if epochs else {"epoch": 0, **(stopped or {})}
    lora = model.peft_config["default"]
    history: dict[str, Any] = {
        "base_model": base_model, "dimensions": dims, "device": device,
        "init_adapter": None if init_adapter is None else str(init_adapter),
        # The LoRA shape actually trained: the recipe's, or a continued adapter's own.
        "recipe": {**asdict(recipe), "lora_r": lora.r, "lora_alpha": lora.lora_alpha,
                   "lora_dropout": lora.lora_dropout, "target_modules": sorted(lora.target_modules)},
        "n_train": len(t_texts), "n_val": len(v_texts), "max_length": limit,
        "epochs": epochs, "best_epoch": best["epoch"], "best_val_mae": best["val_mae"],
        "best_val_mae_per_dim": best["val_mae_per_dim"], "seconds": round(time.monotonic() - started, 2),
    }
    if start_val is not None:
        history["start_val_mae"] = start_val["val_mae"]
    if stopped is not None:
        history["stopped"] = stopped
    hist_file.parent.mkdir(parents=True, exist_ok=True)
    hist_file.write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
    return StudentResult(adapter_dir=out, history_path=hist_file, best_epoch=best["epoch"],
                         best_val_mae=best["val_mae"], history=history, stopped=stopped is not None)


def _build(base_model: str, dims: list[str], recipe: StudentRecipe, ty: np.ndarray, tw: np.ndarray,
           device: str, init_adapter: str | Path | None = None) -> tuple[Any, Any, int, int]:
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    if init_adapter is not None and not (Path(init_adapter) / ADAPTER_CONFIG).is_file():
        raise TrainingError(f"{init_adapter}: no adapter to continue ({ADAPTER_CONFIG} missing)", step="student")
    # Master weights in fp32 on every device; bf16 comes from autocast on CUDA.
    tokenizer, model, pad_id = load_base(base_model, num_labels=len(dims), dtype=torch.float32,
                                         problem_type="regression")
    if init_adapter is not None:
        try:
            peft_model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            # Typically a head of other dimensions or LoRA targets the base lacks: say which adapter.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainingError(f"{init_adapter}: cannot continue this adapter on {base_model} with "
                                f"{len(dims)} dimensions: {first}", step="student") from exc
    else:
        head = getattr(model, head_name(model))
        if head.bias is not None:
            # Start at the mean score so the first steps learn structure rather than the offset.
            with torch.no_grad():
                head.bias.copy_(torch.from_numpy(np.average(ty, axis=0, weights=tw)))
        targets = list(recipe.target_modules) if recipe.target_modules else DEFAULT_TARGETS.get(
            model.config.model_type)
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                            lora_dropout=recipe.lora_dropout, target_modules=targets)
        peft_model = get_peft_model(model, config)
    peft_model.to(device)
    limit = model_max_length(model.config, tokenizer, recipe.max_length)
    return peft_model, tokenizer, pad_id, limit


def _predict(model: Any, ids: list[list[int]], pad_id: int, device: str, batch_size: int) -> np.ndarray:
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: np.ndarray | None = None
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            input_ids, mask = pad_batch([ids[i] for i in chunk], pad_id, device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
            out[chunk] = logits
    assert out is not None
    return out


def _validate(model: Any, val_ids: list[list[int]], vy: np.ndarray, dims: list[str], pad_id: int, device: str,
              batch_size: int) -> dict[str, Any]:
    pred = np.clip(_predict(model, val_ids, pad_id, device, batch_size), 0.0, 10.0)
    per_dim = np.abs(pred - vy).mean(axis=0)
    return {"val_mae": float(per_dim.mean()),
            "val_mae_per_dim": {d: float(v) for d, v in zip(dims, per_dim, strict=True)}}


def _autocast(device: str) -> Any:
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _loop(model: Any, recipe: StudentRecipe, train_ids: list[list[int]], ty: np.ndarray, tw: np.ndarray,
          val_ids: list[list[int]], vy: np.ndarray, dims: list[str], pad_id: int, device: str, out: Path,
          progress: ProgressFn | None, on_epoch: EpochFn | None = None
          ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The validated epochs' records, and where it stopped (None: it ran all its epochs)."""
    head_params = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    head_ids = {id(p) for p in head_params}
    lora_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": lora_params, "lr": recipe.lr},
                             {"params": head_params, "lr": recipe.head_lr}],
                            weight_decay=recipe.weight_decay)
    batches_per_epoch = math.ceil(len(train_ids) / recipe.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / recipe.grad_accum)
    total_steps = steps_per_epoch * recipe.epochs
    warmup = max(1, round(total_steps * recipe.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    generator = torch.Generator().manual_seed(recipe.seed)
    y_t, w_t = torch.from_numpy(ty), torch.from_numpy(tw)
    epochs: list[dict[str, Any]] = []
    best = math.inf
    step = 0
    stopped: dict[str, Any] | None = None
    epoch = 0
    try:
        for epoch in range(1, recipe.epochs + 1):
            model.train()
            epoch_start = time.monotonic()
            order = torch.randperm(len(train_ids), generator=generator).tolist()
            total, weight_sum = 0.0, 0.0
            opt.zero_grad()
            for b in range(batches_per_epoch):
                idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
                input_ids, mask = pad_batch([train_ids[i] for i in idx], pad_id, device)
                with _autocast(device):
                    pred = model(input_ids=input_ids, attention_mask=mask).logits.float()
                yb, wb = y_t[idx].to(device), w_t[idx].to(device)
                per_row = ((pred - yb) ** 2).mean(dim=1)
                # Normalise by the weight of the whole accumulated step, so accumulation equals a big batch.
                group = order[(b - b % recipe.grad_accum) * recipe.batch_size:
                              (b - b % recipe.grad_accum + recipe.grad_accum) * recipe.batch_size]
                denom = float(w_t[group].sum()) or 1.0
                ((per_row * wb).sum() / denom).backward()
                total += float((per_row.detach() * wb).sum())
                weight_sum += float(wb.sum())
                if (b + 1) % recipe.grad_accum == 0 or b + 1 == batches_per_epoch:
                    torch.nn.utils.clip_grad_norm_(lora_params + head_params, recipe.max_grad_norm)
                    opt.step()
                    scheduler.step()
                    opt.zero_grad()
                    step += 1
                    if progress is not None:
                        progress(TrainProgress("train", epoch, recipe.epochs, step, total_steps,
                                               loss=total / max(weight_sum, 1e-12)))
            scores = _validate(model, val_ids, vy, dims, pad_id, device, recipe.eval_batch_size)
            improved = scores["val_mae"] < best
            if improved:
                best = scores["val_mae"]
                model.save_pretrained(str(out))
            epochs.append({"epoch": epoch, "train_loss": total / max(weight_sum, 1e-12), **scores,
                           "saved": improved, "seconds": round(time.monotonic() - epoch_start, 2)})
            if on_epoch is not None:
                on_epoch(EpochEnd(epoch, dict(epochs[-1]), lambda path: model.save_pretrained(str(path))))
            if progress is not None:
                progress(TrainProgress("val", epoch, recipe.epochs, step, total_steps,
                                       loss=epochs[-1]["train_loss"], val_mae=scores["val_mae"]))
    except StopTraining:
        stopped = {"in_epoch": epoch, "step": step}
        if not epochs:
            # Stopped before its first validation: what it learnt so far is kept, and validated now.
            model.save_pretrained(str(out))
            stopped.update(_validate(model, val_ids, vy, dims, pad_id, device, recipe.eval_batch_size))
    return epochs, stopped
