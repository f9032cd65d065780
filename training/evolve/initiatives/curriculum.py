"""Long-context curriculum: the student trained in length buckets from short to long, one adapter throughout.

``params.buckets`` are the most tokens a training input may have in each bucket (ascending, e.g.
``[128, 256, 512, 2048]``) and ``params.shares`` the share of the initiative's allocation each may spend.
Every bucket starts from the adapter the previous one ended with (the first from the parent's adapter,
when it has one on the same base and ``from_parent``), with the same base learning rates and a fresh
warm-up and decay over its own steps; it ends after ``epochs_per_bucket`` epochs or as soon as its share is
spent (the meter is looked at after every optimiser step), keeping the best validated epoch, or the
weights it has when it stopped before the first validation.

Inputs are cut at each length exactly as serving cuts them (:func:`scoring.text.encode_head_tail`), with
the package's head/tail proportions scaled to the bucket's room: a package of head 128 + tail 64 tokens
gets two thirds head and one third tail at every length. The candidate serves at the last bucket's
length (its ``preprocessing`` and ``stage2.max_length`` are set to that cut), so its probe is retrained
on the same cut. After every bucket the adapter goes to ``checkpoints/bucket-<i>-<length>/`` with a
``done.json``; a rerun goes on after the last finished bucket.

Every bucket is one :func:`training.student.train_student` run: buckets after the first (and the first,
from the parent) continue an adapter through its ``init_adapter``, and a spent share ends a bucket through
:class:`training.student.StopTraining`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import Field, model_validator

from scoring.package import FilterPackage, load_package
from scoring.student import ADAPTER_CONFIG, ADAPTER_WEIGHTS, model_max_length
from scoring.text import special_tokens
from training.evolve.base import Context, Outcome
from training.evolve.exceptions import EvolveError
from training.evolve.initiatives._candidate import (
    Candidate,
    CandidateParams,
    finish_candidate,
    prepare_candidate,
    set_config_value,
    start_candidate,
    train_probe,
)
from training.steps import portable_adapter, student_predict, tier_weights
from training.student import StopTraining, TrainProgress, train_student

DONE = "done.json"


class Params(CandidateParams):
    buckets: tuple[int, ...] = Field((128, 256, 512), min_length=1, description=(
        "most tokens per training input in each bucket, ascending; the last is what the candidate serves"))
    shares: tuple[float, ...] = Field((0.2, 0.3, 0.5), min_length=1, description=(
        "share of the allocation each bucket may spend (same length as buckets, sum at most 1)"))
    epochs_per_bucket: int = Field(1, ge=1, description="epochs per bucket at most (its share may end it first)")
    from_parent: bool = Field(True, description="start the first bucket from the parent's adapter when it has one")
    weighting: str = Field("none", pattern="^(none|tier)$", description="sample weighting: none or tier")

    @model_validator(mode="after")
    def _buckets(self) -> Params:
        if len(self.buckets) != len(self.shares):
            raise ValueError(f"{len(self.buckets)} buckets but {len(self.shares)} shares")
        if any(b < 16 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets must be ascending token counts of at least 16, got {list(self.buckets)}")
        if any(s <= 0 for s in self.shares) or sum(self.shares) > 1.0 + 1e-9:
            raise ValueError(f"shares must be positive and sum to at most 1, got {list(self.shares)} "
                             f"(sum {sum(self.shares):g})")
        return self


def scaled_cut(head: int, tail: int, length: int, n_special: int) -> tuple[int, int]:
    """Head and tail tokens filling ``length`` less the special tokens, in the proportion ``head:tail``."""
    room = length - n_special
    if room < 2:
        raise EvolveError(f"a bucket of {length} tokens leaves no room beside {n_special} special tokens")
    keep_head = max(1, min(room, round(room * head / (head + tail))))
    return keep_head, room - keep_head


def _bucket_dir(ctx: Context, index: int, length: int) -> Path:
    return ctx.checkpoints / f"bucket-{index}-{length}"


def _start_adapter(ctx: Context, params: Params, package: FilterPackage, index: int) -> Path | None:
    if index > 0:
        return _bucket_dir(ctx, index - 1, params.buckets[index - 1]) / "adapter"
    parent = ctx.package
    stage2 = parent.config.stage2
    if not params.from_parent or stage2 is None or package.config.stage2 is None \
            or stage2.base_model != package.config.stage2.base_model:
        return None
    adapter = parent.file(stage2.adapter)
    return adapter if (adapter / ADAPTER_WEIGHTS).is_file() and (adapter / ADAPTER_CONFIG).is_file() else None


def _base_limits(base_model: str, length: int) -> tuple[int, int]:
    """(special tokens per input, ``length`` capped by the base as the student caps it)."""
    from transformers import AutoConfig, AutoTokenizer

    from scoring.models import hub_offline
    from scoring.student import resolve_base

    path = resolve_base(base_model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=hub_offline())
    config = AutoConfig.from_pretrained(path, local_files_only=hub_offline())
    prefix, suffix = special_tokens(tokenizer)
    return len(prefix) + len(suffix), min(length, model_max_length(config, tokenizer, length))


def _train_bucket(ctx: Context, params: Params, candidate: Candidate, index: int, start: Path | None
                  ) -> dict[str, Any]:
    cfg = candidate.package.config
    assert cfg.stage2 is not None
    length, share = params.buckets[index], params.shares[index]
    dims = cfg.dimension_names
    train, val = candidate.work.split("train", cfg), candidate.work.split("validation", cfg)
    if params.max_train is not None and len(train) > params.max_train:
        train = train.subset(np.unique(np.linspace(0, len(train) - 1, params.max_train).round().astype(int)))
    ty = train.targets.astype(np.float32)
    tw = (tier_weights(train, cfg) if params.weighting == "tier" else np.ones(len(train))).astype(np.float32)
    out = _bucket_dir(ctx, index, length)
    if out.exists():
        shutil.rmtree(out)  # an unfinished try of this bucket: it starts over from the previous adapter
    adapter_out = out / "adapter"
    budget = share * ctx.meter.allocation
    spent_before = ctx.meter.spent
    label = f"curriculum bucket {index + 1}/{len(params.buckets)} ({length} tokens)"
    steps = [0]

    def on_step(p: TrainProgress) -> None:
        steps[0] = p.step
        ctx.progress(label, p.step, p.steps)
        ctx.meter.check(label)
        if ctx.meter.spent - spent_before >= budget:
            raise StopTraining  # the student keeps its best validated epoch, or the weights so far

    n_special, max_length = _base_limits(cfg.stage2.base_model, length)
    pre = ctx.package.config.preprocessing
    head, tail = scaled_cut(pre.head_tokens, pre.tail_tokens, max_length, n_special)
    started = time.monotonic()
    result = train_student(train.texts, ty, dims, cfg.stage2.base_model, adapter_out, sample_weights=tw,
                           val_texts=val.texts, val_targets=val.targets, device=ctx.device, progress=on_step,
                           history_path=out / "history.json", init_adapter=start,
                           **{**params.student, "seed": ctx.seed, "head_tokens": head, "tail_tokens": tail,
                              "max_length": max_length, "epochs": params.epochs_per_bucket})
    epochs = result.history["epochs"]
    done = {"bucket": index, "max_length": max_length, "head_tokens": head, "tail_tokens": tail,
            "share": share, "steps": steps[0], "epochs": len(epochs), "stopped_at_share": result.stopped,
            "val_mae": result.best_val_mae, "seconds": round(time.monotonic() - started, 3),
            "started_from": "scratch" if start is None else str(start)}
    return done  # run() writes it to done.json last: a bucket counts as finished once its adapter is on disk


def run(ctx: Context) -> Outcome:
    params = Params.model_validate(dict(ctx.params))
    candidate = start_candidate(ctx)
    stage2 = candidate.package.config.stage2
    if stage2 is None:
        raise EvolveError(f"{ctx.initiative}: {ctx.package.ref} has no stage2 section: no student to train")
    # The candidate serves at the last bucket's cut; its probe sees the same text, so it is retrained on it.
    n_special, _ = _base_limits(stage2.base_model, params.buckets[-1])
    pre = ctx.package.config.preprocessing
    head, tail = scaled_cut(pre.head_tokens, pre.tail_tokens, params.buckets[-1], n_special)
    set_config_value(candidate.package.path, "preprocessing", "head_tokens", head)
    set_config_value(candidate.package.path, "preprocessing", "tail_tokens", tail)
    set_config_value(candidate.package.path, "stage2", "max_length", params.buckets[-1])
    candidate.package = load_package(candidate.package.path)
    with ctx.meter.running("curriculum: probe"):
        prepare_candidate(ctx, candidate, params)
        train_probe(ctx, candidate, params)
    # The adapters in checkpoints were trained on one train split; data that changed since voids them.
    split_digest = orjson.loads((candidate.work.splits / "manifest.json").read_bytes())["splits"]["train"][
        "ids_sha256"]
    buckets: list[dict[str, Any]] = []
    resuming = True
    for index, length in enumerate(params.buckets):
        done_file = _bucket_dir(ctx, index, length) / DONE
        done = orjson.loads(done_file.read_bytes()) if done_file.is_file() else None
        if resuming and done is not None and done.get("train_ids_sha256") == split_digest:
            buckets.append({**done, "resumed": True})
            continue
        resuming = False  # every bucket after a retrained one is retrained too: it starts from it
        start = _start_adapter(ctx, params, candidate.package, index)
        with ctx.meter.running(f"curriculum: bucket {length}"):
            done = {**_train_bucket(ctx, params, candidate, index, start), "train_ids_sha256": split_digest}
            (_bucket_dir(ctx, index, length) / DONE).write_bytes(orjson.dumps(done, option=orjson.OPT_INDENT_2))
            buckets.append({**done, "resumed": False})
    final = _bucket_dir(ctx, len(params.buckets) - 1, params.buckets[-1]) / "adapter"
    target = candidate.package.file(stage2.adapter)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(final, target)
    portable_adapter(target, stage2.base_model)
    candidate.package = load_package(candidate.package.path)
    with ctx.meter.running("curriculum: calibrate and export"):
        val = candidate.work.split("validation", candidate.package.config)
        pred = student_predict(candidate.package, val.texts, candidate.work, "validation", device=ctx.device)
        val_mae = float(np.abs(np.asarray(pred) - val.targets).mean())
        figures = finish_candidate(ctx, candidate)
    if any(b["stopped_at_share"] for b in buckets):
        stopped = [b["max_length"] for b in buckets if b["stopped_at_share"]]
        figures["buckets_stopped_at_share"] = stopped
    return Outcome(package_dir=candidate.package.path,
                   notes={"buckets": buckets, "serving_cut": {"head_tokens": head, "tail_tokens": tail,
                                                             "max_length": params.buckets[-1]}, **figures},
                   metrics={"student_validation_mae": val_mae, "buckets_finished": float(len(buckets))})

