"""Distillation: the current student (the teacher) taught to a smaller base, with the oracle labels beside it.

The teacher is the parent package's student, or the candidate of the initiative named by
``params.teacher`` (``ctx.upstream``). Its outputs on the candidate's training rows are computed once,
through the serving code (:func:`training.steps.student_predict`, i.e. :class:`scoring.student.StudentPool`),
and cached under ``checkpoints/teacher/`` keyed by its adapter hash and the texts, so a rerun does not
recompute them. The student is a fresh LoRA on ``params.student_base`` (on a GPU e.g. google/gemma-3-270m
for a Gemma-3-1B teacher; in tests a tiny random Gemma), trained on

    loss(s) = alpha · ‖s − t‖² + (1 − alpha) · ‖s − y‖²        (t: teacher output, y: oracle label)

through the normal :func:`training.student.train_student` path on blended targets ``b = alpha·t + (1−alpha)·y``:
expanding both squares, ``loss(s) = ‖s − b‖² + alpha(1 − alpha)·‖t − y‖²``, and the last term does not depend
on the student, so the two losses have the same gradients and the same minimiser (per row, so sample
weights carry over too). Checkpoints are chosen on validation MAE against the oracle labels, the
quality that matters. Teacher and student are then compared side by side on the validation split (MAE
against the oracle) and in articles per second through StudentPool on the same fixed texts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence

import numpy as np
import orjson
from pydantic import Field

from scoring.package import FilterPackage, load_package
from training.evolve.base import Context, Outcome
from training.evolve.exceptions import EvolveError
from training.evolve.initiatives._candidate import (
    CandidateParams,
    finish_candidate,
    metered,
    prepare_candidate,
    set_config_value,
    start_candidate,
    train_probe,
)
from training.steps import Workspace, default_cache_dir, portable_adapter, student_predict

TARGETS_FILE = "targets.json"


class Params(CandidateParams):
    student_base: str = Field(description="base model of the new, smaller student (hub id or local path)")
    teacher: str | None = Field(None, description="initiative whose candidate teaches (default: the parent package)")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the teacher's outputs against the oracle labels")
    speed_texts: int = Field(64, ge=4, description="validation/test texts articles/s is measured on")


def teacher_package(ctx: Context, params: Params) -> FilterPackage:
    if params.teacher is None:
        teacher = ctx.package
    else:
        upstream = ctx.upstream.get(params.teacher)
        if upstream is None or upstream.package_dir is None:
            raise EvolveError(f"{ctx.initiative}: teacher initiative {params.teacher!r} made no package "
                              f"(known: {sorted(ctx.upstream)})")
        teacher = load_package(upstream.package_dir)
    stage2 = teacher.config.stage2
    if stage2 is None or not (teacher.file(stage2.adapter) / "adapter_model.safetensors").is_file():
        raise EvolveError(f"{ctx.initiative}: teacher {teacher.ref} at {teacher.path} has no trained student")
    return teacher


def blend(teacher: np.ndarray, oracle: np.ndarray, alpha: float) -> np.ndarray:
    """The targets whose MSE equals the mixed loss up to a constant (module docstring)."""
    return alpha * np.clip(teacher, 0.0, 10.0) + (1.0 - alpha) * oracle


def articles_per_second(package: FilterPackage, texts: Sequence[str], device: str) -> float:
    """Stage-2 throughput through the serving code, after a warm-up batch."""
    from scoring.student import StudentPool

    pool = StudentPool(device=device, batch_size=16)
    pool.register(package)
    pool.predict(package.ref, list(texts[:4]))
    started = time.perf_counter()
    pool.predict(package.ref, list(texts))
    return len(texts) / max(time.perf_counter() - started, 1e-9)


def run(ctx: Context) -> Outcome:
    from training.student import TrainProgress, train_student

    params = Params.model_validate(dict(ctx.params))
    teacher = teacher_package(ctx, params)
    candidate = start_candidate(ctx)
    if candidate.package.config.stage2 is None:
        raise EvolveError(f"{ctx.initiative}: {ctx.package.ref} has no stage2 section: no student to distil into")
    set_config_value(candidate.package.path, "stage2", "base_model", params.student_base)
    package = load_package(candidate.package.path)
    stage2 = package.config.stage2
    assert stage2 is not None
    shutil.rmtree(package.file(stage2.adapter), ignore_errors=True)  # the parent's adapter fits another base
    candidate.package = package
    cfg = package.config
    progress = metered(ctx)
    with ctx.meter.running("distill: probe"):
        prepare_candidate(ctx, candidate, params)
        train_probe(ctx, candidate, params)
    train, val = candidate.work.split("train", cfg), candidate.work.split("validation", cfg)
    if params.max_train is not None and len(train) > params.max_train:
        train = train.subset(np.unique(np.linspace(0, len(train) - 1, params.max_train).round().astype(int)))
    teacher_work = Workspace(ctx.checkpoints / "teacher", cache_dir=ctx.cache_dir or default_cache_dir())
    with ctx.meter.running("distill: teacher outputs"):
        t_train = student_predict(teacher, train.texts, teacher_work, "train", device=ctx.device, progress=progress)
        t_val = student_predict(teacher, val.texts, teacher_work, "validation", device=ctx.device,
                                progress=progress)
    targets = blend(t_train, train.targets, params.alpha)
    (ctx.checkpoints / TARGETS_FILE).write_bytes(orjson.dumps(
        {"alpha": params.alpha, "teacher": teacher.ref, "teacher_adapter": teacher.model_hashes.get("adapter"),
         "ids": train.ids, "targets": targets.tolist()}, option=orjson.OPT_SERIALIZE_NUMPY))

    def on_step(p: TrainProgress) -> None:
        progress(f"distilled student epoch {p.epoch}/{p.epochs}", p.step, p.steps)

    with ctx.meter.running("distill: student"):
        started = time.monotonic()
        train_student(train.texts, targets, cfg.dimension_names, params.student_base, package.file(stage2.adapter),
                      val_texts=val.texts, val_targets=val.targets, device=ctx.device, progress=on_step,
                      history_path=candidate.work.reports / "student_history.json",
                      head_tokens=cfg.preprocessing.head_tokens, tail_tokens=cfg.preprocessing.tail_tokens,
                      max_length=stage2.max_length, seed=ctx.seed, **params.student)
        seconds = time.monotonic() - started
        portable_adapter(package.file(stage2.adapter), stage2.base_model)
        candidate.package = load_package(package.path)
    with ctx.meter.running("distill: compare and export"):
        s_val = student_predict(candidate.package, val.texts, candidate.work, "validation", device=ctx.device,
                                progress=progress)
        test = candidate.work.split("test", cfg)
        speed_texts = (val.texts + test.texts)[:params.speed_texts]
        teacher_speed = articles_per_second(teacher, speed_texts, ctx.device)
        student_speed = articles_per_second(candidate.package, speed_texts, ctx.device)
        figures = finish_candidate(ctx, candidate)
    teacher_mae = float(np.abs(np.clip(t_val, 0, 10) - val.targets).mean())
    student_mae = float(np.abs(np.clip(s_val, 0, 10) - val.targets).mean())
    teacher_base = teacher.config.stage2.base_model if teacher.config.stage2 else None
    side_by_side = {"teacher": {"ref": teacher.ref, "base": teacher_base, "validation_mae": teacher_mae,
                                "articles_per_s": teacher_speed},
                    "student": {"base": params.student_base, "validation_mae": student_mae,
                                "articles_per_s": student_speed, "training_seconds": round(seconds, 2)}}
    notes = {"alpha": params.alpha, "side_by_side": side_by_side, "validation_articles": len(val),
             "speed_texts": len(speed_texts), "train_rows": len(train), **figures}
    return Outcome(package_dir=candidate.package.path, notes=notes,
                   metrics={"teacher_validation_mae": teacher_mae, "student_validation_mae": student_mae,
                            "teacher_articles_per_s": teacher_speed, "student_articles_per_s": student_speed,
                            "articles_per_s": student_speed, "speedup": student_speed / max(teacher_speed, 1e-9)})
