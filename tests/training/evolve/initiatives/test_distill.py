"""Distillation end to end: a tiny Gemma teacher's outputs are the targets at alpha = 1; quality and speed
side by side."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from scoring.student import StudentPool
from tests.conftest import build_tiny_gemma, train_tiny_student
from training.evolve.base import Outcome
from training.evolve.exceptions import EvolveError
from training.evolve.initiatives import distill
from training.evolve.initiatives.distill import blend
from training.steps import Workspace

from .test_augment import FAST, assert_complete_candidate, context, labelled_data, parent_package, shared_cache

pytestmark = pytest.mark.integration

DIMS = ["wellbeing", "evidence", "reach", "durability"]


def test_blend_is_the_mixed_loss_minimiser() -> None:
    rng = np.random.default_rng(0)
    teacher, oracle = rng.uniform(0, 10, (50, 3)), rng.uniform(0, 10, (50, 3))
    b = blend(teacher, oracle, 0.3)
    # alpha·(s−t)² + (1−alpha)·(s−y)² − (s−b)² is the same for every s: the same gradients.
    for s in (np.zeros_like(b), rng.uniform(0, 10, b.shape)):
        gap = 0.3 * (s - teacher) ** 2 + 0.7 * (s - oracle) ** 2 - (s - b) ** 2
        np.testing.assert_allclose(gap, 0.3 * 0.7 * (teacher - oracle) ** 2, atol=1e-9)


def test_distill_with_alpha_one_trains_on_the_teacher_outputs(tmp_path: Path, tiny_gemma: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    adapter = train_tiny_student(tiny_gemma, DIMS, tmp_path / "teacher-adapter", head_tokens=48, tail_tokens=16)
    parent = parent_package(tmp_path / "filters", tiny_gemma, adapter=adapter)
    small = build_tiny_gemma(tmp_path / "small-base", seed=1)
    data = labelled_data(tmp_path / "labelled.jsonl")
    params = {**FAST, "probe_folds": 1, "student_base": str(small), "alpha": 1.0, "speed_texts": 8}
    ctx, ledger = context(tmp_path, parent, data, "distill", params, cache=shared_cache(tmp_path_factory))

    with pytest.raises(EvolveError, match="teacher initiative 'sweep'"):
        distill.run(replace(ctx, params={**params, "teacher": "sweep"}, upstream={"sweep": Outcome(package_dir=None)}))
    outcome = distill.run(ctx)

    saved = orjson.loads((ctx.checkpoints / distill.TARGETS_FILE).read_bytes())
    train_rows = {orjson.loads(line)["id"]: orjson.loads(line)
                  for line in (ctx.work / "workspace" / "splits" / "train.jsonl").read_bytes().splitlines()}
    assert saved["ids"] == list(train_rows) and saved["alpha"] == 1.0
    # The teacher scored afresh here, through the serving pool: the targets are its outputs.
    pool = StudentPool()
    pool.register(parent)
    from training.dataset import load_labelled

    texts = load_labelled(ctx.work / "workspace" / "splits" / "train.jsonl", DIMS, filter_name="demo").texts
    np.testing.assert_allclose(saved["targets"], np.clip(pool.predict(parent.ref, texts), 0, 10), atol=1e-4)
    assert list((ctx.checkpoints / "teacher" / "predictions").glob("stage2-demo-*-train-*.json"))
    assert Workspace(ctx.checkpoints / "teacher").predictions.is_dir()

    package = assert_complete_candidate(outcome.package_dir, parent)  # type: ignore[arg-type]
    assert package.config.stage2 is not None and package.config.stage2.base_model == str(small)
    side = outcome.notes["side_by_side"]
    assert side["teacher"]["ref"] == parent.ref and side["student"]["base"] == str(small)
    for key in ("teacher_validation_mae", "student_validation_mae", "teacher_articles_per_s",
                "student_articles_per_s"):
        assert np.isfinite(outcome.metrics[key]) and outcome.metrics[key] > 0
    jobs = {e["job"] for e in ledger.entries if e["kind"] == "charge"}
    assert {"distill: probe", "distill: teacher outputs", "distill: student", "distill: compare and export"} <= jobs
    assert ledger.device_seconds("distill") > 0
