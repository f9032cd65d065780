"""Long-context curriculum end to end: buckets in order, each from the previous adapter, resumed after a stop."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from training.evolve.exceptions import BudgetExhausted
from training.evolve.initiatives import curriculum
from training.evolve.initiatives.curriculum import Params, scaled_cut
from training.evolve.ledger import Ledger

from .test_augment import FAST, assert_complete_candidate, context, labelled_data, parent_package, shared_cache

pytestmark = pytest.mark.integration


def test_scaled_cut_keeps_the_package_proportions() -> None:
    assert scaled_cut(128, 64, 2048, 2) == (1364, 682)
    assert scaled_cut(48, 16, 32, 2) == (22, 8)
    assert scaled_cut(256, 0, 128, 1) == (127, 0)


def test_params_refuse_unordered_buckets_and_overspent_shares() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Params.model_validate({"buckets": [256, 128], "shares": [0.5, 0.5]})
    with pytest.raises(ValueError, match="sum to at most 1"):
        Params.model_validate({"buckets": [128, 256], "shares": [0.6, 0.6]})
    with pytest.raises(ValueError, match="2 buckets but 1 shares"):
        Params.model_validate({"buckets": [128, 256], "shares": [1.0]})


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_curriculum_runs_buckets_in_order_and_resumes_after_the_last_finished(
        tmp_path: Path, tiny_gemma: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    parent = parent_package(tmp_path / "filters", tiny_gemma)
    data = labelled_data(tmp_path / "labelled.jsonl")
    params = {**FAST, "probe_folds": 1, "buckets": [32, 64], "shares": [0.5, 0.5]}
    cache = shared_cache(tmp_path_factory)

    # The first try: the clock jumps past the allocation as soon as the second bucket reports progress.
    now = [0.0]
    seen: list[str] = []

    def progress(description: str, completed: int, total: int | None) -> None:
        seen.append(description)
        if description.startswith("curriculum bucket 2/2"):
            now[0] += 1e6

    ctx, ledger = context(tmp_path, parent, data, "curriculum", params, cache=cache, allocation=1000.0,
                          clock=lambda: now[0])
    ctx = replace(ctx, progress=progress)
    with pytest.raises(BudgetExhausted):
        curriculum.run(ctx)
    buckets = [d for d in seen if d.startswith("curriculum bucket")]
    first_second = buckets.index(next(d for d in buckets if d.startswith("curriculum bucket 2/2")))
    assert first_second > 0 and all(d.startswith("curriculum bucket 1/2") for d in buckets[:first_second])
    done_1 = ctx.checkpoints / "bucket-0-32" / "done.json"
    assert done_1.is_file() and not (ctx.checkpoints / "bucket-1-64" / "done.json").exists()
    first_adapter = _digest(ctx.checkpoints / "bucket-0-32" / "adapter")
    assert ledger.spent("curriculum") >= 1000.0
    first_try = len(ledger.entries)
    assert any(d.startswith("probe") for d in seen) and (ctx.checkpoints / "probe" / "digest").is_file()

    # The rerun (more money) goes on at the second bucket, from the first bucket's adapter.
    seen.clear()
    ctx, ledger = context(tmp_path, parent, data, "curriculum", params, cache=cache, allocation=1e7,
                          ledger=Ledger(ledger.path))
    ctx = replace(ctx, progress=progress)
    outcome = curriculum.run(ctx)
    assert not any(d.startswith("curriculum bucket 1/2") for d in seen)
    assert not any(d.startswith("probe") for d in seen)  # the probe the first try trained, from checkpoints
    notes = outcome.notes["buckets"]
    assert [b["max_length"] for b in notes] == [32, 64] and [b["resumed"] for b in notes] == [True, False]
    assert notes[1]["started_from"] == str(ctx.checkpoints / "bucket-0-32" / "adapter")
    assert _digest(ctx.checkpoints / "bucket-0-32" / "adapter") == first_adapter
    for b in notes:  # the package's 48:16 head:tail, scaled to each bucket less BERT's [CLS] and [SEP]
        assert b["head_tokens"] + b["tail_tokens"] + 2 == b["max_length"]
        assert abs(b["head_tokens"] / (b["head_tokens"] + b["tail_tokens"]) - 0.75) < 0.05

    package = assert_complete_candidate(outcome.package_dir, parent)  # type: ignore[arg-type]
    assert package.config.stage2 is not None and package.config.stage2.max_length == 64
    assert package.config.preprocessing.head_tokens + package.config.preprocessing.tail_tokens == 62
    assert _digest(package.path / "adapter") == _digest(ctx.checkpoints / "bucket-1-64" / "adapter")
    adapter_config = orjson.loads((package.path / "adapter" / "adapter_config.json").read_bytes())
    assert adapter_config["base_model_name_or_path"] == str(tiny_gemma)
    jobs = [{e["job"] for e in entries if e["kind"] == "charge"}
            for entries in (ledger.entries[:first_try], ledger.entries[first_try:])]
    assert {"curriculum: bucket 32", "curriculum: bucket 64"} <= jobs[0]
    assert "curriculum: bucket 64" in jobs[1] and "curriculum: bucket 32" not in jobs[1]
    assert ledger.device_seconds("curriculum") > 0


def test_a_spent_share_ends_its_bucket_and_the_next_goes_on_from_its_weights(
        tmp_path: Path, tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    parent = parent_package(tmp_path / "filters", tiny_gemma)
    data = labelled_data(tmp_path / "labelled.jsonl")
    params = {**FAST, "probe_folds": 1, "buckets": [32, 64], "shares": [0.5, 0.5]}
    now = [0.0]
    jumped = [False]

    def progress(description: str, completed: int, total: int | None) -> None:
        # Bucket 1's share (500 of 1000) is spent at its second step; the allocation is not.
        if description.startswith("curriculum bucket 1/2") and completed == 2 and not jumped[0]:
            jumped[0] = True
            now[0] += 600.0

    ctx, _ = context(tmp_path, parent, data, "curriculum", params, cache=shared_cache(tmp_path_factory),
                     allocation=1000.0, clock=lambda: now[0])
    outcome = curriculum.run(replace(ctx, progress=progress))
    first, second = outcome.notes["buckets"]
    assert first["stopped_at_share"] and first["steps"] == 2 and first["epochs"] == 0
    assert not second["stopped_at_share"] and second["epochs"] == 1
    assert outcome.notes["buckets_stopped_at_share"] == [32]
    # The weights it had when it stopped were kept, validated, and are where bucket 2 started.
    history = orjson.loads((ctx.checkpoints / "bucket-0-32" / "history.json").read_bytes())
    assert history["stopped"]["in_epoch"] == 1 and first["val_mae"] == history["stopped"]["val_mae"]
    assert (ctx.checkpoints / "bucket-0-32" / "adapter" / "adapter_model.safetensors").is_file()
    assert second["started_from"] == str(ctx.checkpoints / "bucket-0-32" / "adapter")
    assert_complete_candidate(outcome.package_dir, parent)  # type: ignore[arg-type]
