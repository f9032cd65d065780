"""Targeted augmentation: synthetic rows for the tiers, languages or domains the real data has too few of.

Groups are the oracle tier, the ``language``, the ``source`` or the ``source_type`` of each real labelled
row (``params.by``); a group with fewer than ``params.min_examples`` real rows in ``ctx.train_data`` gets
synthetic rows until it reaches that count (at most ``params.max_per_group``).

``mode: paraphrase`` (the only mode today) rewrites real rows of the group, positives (MEDIUM and HIGH)
first, offline and deterministically: the sentences of each paragraph are put in another order, the
paragraphs after the lede are too, and every other variant takes its title from its own first sentence.
What an article says, and therefore its label, stays; what the models see changes, which is what a
few-shot group needs to stop being memorised. The label of the source row is kept as it is.

Synthetic rows are marked (``metadata.synthetic: true``, ``metadata.synthetic_of``, ``metadata.generator``)
and kept apart: they are appended, one line per generation and flushed, to ``checkpoints/synthetic.jsonl``
(a rerun reads it and generates only what is missing), and are added to the candidate's *train* split
only, after the real data was split. Only rows of the train split are paraphrased, so no variant of a
validation, calibration or test article (nor of a held-out one: ``ctx.train_data`` holds none) is
trained on; calibration and threshold see real rows only, and the probe is trained on the train split
alone (not cross-fitted: cross-fitting pools train and calibration rows and would calibrate on
synthetic out-of-fold predictions).

This module also holds what every initiative that trains a candidate package shares: the copy of the
parent under a new version (:func:`start_candidate`, on :mod:`training.evolve.initiatives._candidate`),
a progress callback that charges the meter (:func:`metered`), the probe with its checkpoint
(:func:`train_probe`) and the steps after the student (:func:`finish_candidate`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import Field

from scoring.aggregate import Tier, aggregate
from scoring.package import FilterPackage
from training.dataset import LabelledSet, load_labelled
from training.evolve.base import Context, Outcome
from training.evolve.exceptions import EvolveError
from training.evolve.initiatives._candidate import (
    CandidateParams,
    finish_candidate,
    mean_mae,
    metered,
    prepare_candidate,
    start_candidate,
    train_probe,
)
from training.steps import (
    Workspace,
    run_student,
)

GENERATOR = "fluxscore.evolve.paraphrase"
SYNTHETIC_FILE = "synthetic.jsonl"
# -- augmentation ------------------------------------------------------------------------------------

GroupBy = Literal["tier", "language", "source", "source_type"]


class Params(CandidateParams):
    mode: Literal["paraphrase"] = Field("paraphrase", description=(
        "paraphrase: offline rewrites of real rows of the group (sentence and paragraph order, titles)"))
    by: tuple[GroupBy, ...] = Field(("tier",), min_length=1, description="what makes a group")
    min_examples: int = Field(20, ge=1, description="a group with fewer real rows than this is augmented")
    max_per_group: int = Field(200, ge=1, description="synthetic rows per group at most")
    probe_folds: int = Field(1, ge=1, le=1, description=(
        "always 1: a cross-fitted probe would calibrate on synthetic out-of-fold predictions"))


def group_of(record: dict[str, Any], tier: Tier, by: str) -> str | None:
    if by == "tier":
        return f"tier={tier.value}"
    value = record.get(by)
    return f"{by}={value}" if isinstance(value, str) and value else None


def under_represented(data: LabelledSet, package: FilterPackage, by: Sequence[str], min_examples: int
                      ) -> dict[str, int]:
    """Group -> real rows, for every group with fewer than ``min_examples`` (tiers with none included)."""
    tiers = data.tiers(package.config)
    counts: Counter[str] = Counter()
    for record, tier in zip(data.records, tiers, strict=True):
        for b in by:
            group = group_of(record, tier, b)
            if group is not None:
                counts[group] += 1
    if "tier" in by:
        for t in Tier:
            counts.setdefault(f"tier={t.value}", 0)
    return {g: n for g, n in sorted(counts.items()) if n < min_examples}


_SENTENCE = re.compile(r"(?<=[.!?…])\s+(?=\S)")


def paraphrase(title: str, content: str, variant: int, seed: int) -> tuple[str, str]:
    """A reordering of an article that says the same things: sentences shuffled within each paragraph,
    paragraphs after the lede shuffled, and on odd variants the title taken from the new first sentence."""
    rng = np.random.default_rng([seed, variant])
    paragraphs = [p for p in content.split("\n\n") if p.strip()]
    rewritten = []
    for p in paragraphs:
        sentences = _SENTENCE.split(p.strip())
        order = rng.permutation(len(sentences)) if len(sentences) > 1 else np.arange(len(sentences))
        rewritten.append(" ".join(sentences[i] for i in order))
    if len(rewritten) > 2:
        rest = rewritten[1:]
        rewritten = [rewritten[0]] + [rest[i] for i in rng.permutation(len(rest))]
    body = "\n\n".join(rewritten)
    new_title = title
    if variant % 2 == 1 and rewritten:
        first = _SENTENCE.split(rewritten[0])[0].rstrip(".!?… ")
        words = first.split()
        new_title = " ".join(words[:14]) + ("…" if len(words) > 14 else "") if words else title
    return new_title, body


def _synthetic_row(source: dict[str, Any], variant: int, seed: int) -> dict[str, Any]:
    title, content = paraphrase(str(source.get("title") or ""), str(source.get("content") or ""), variant, seed)
    sid = str(source["id"])
    row = {**source, "id": f"{sid}~{variant}", "title": title, "content": content}
    if isinstance(row.get("url"), str):
        row["url"] = f"{row['url']}#synthetic-{variant}"
    row["metadata"] = {**(source.get("metadata") or {}), "synthetic": True, "synthetic_of": sid,
                       "generator": GENERATOR, "variant": variant}
    row.pop("truth", None)  # ground truth of a generator's own test data: not the variant's
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an append-only JSONL checkpoint; a torn last line (a kill mid-write) is dropped."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            if n >= len(lines) - 1:
                continue
            raise EvolveError(f"{path}:{n}: not JSON") from None
    return rows


def _append(path: Path, row: dict[str, Any]) -> None:
    import os

    with path.open("ab") as fh:
        fh.write(orjson.dumps(row) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def plan_synthetic(train: LabelledSet, package: FilterPackage, wanted: dict[str, int],
                   by: Sequence[str]) -> tuple[dict[str, list[tuple[dict[str, Any], int]]], list[str]]:
    """Per group, the (source row, variant) pairs to make, and the groups that have no train row to start from."""
    cfg = package.config
    tiers = train.tiers(cfg)
    medium = cfg.tiers.medium
    members: dict[str, list[int]] = {g: [] for g in wanted}
    for i, (record, tier) in enumerate(zip(train.records, tiers, strict=True)):
        for b in by:
            group = group_of(record, tier, b)
            if group in members:
                members[group].append(i)
    plans: dict[str, list[tuple[dict[str, Any], int]]] = {}
    empty: list[str] = []
    for group, need in wanted.items():
        rows = members[group]
        if not rows:
            empty.append(group)
            continue
        # Positives first: the rare MEDIUM/HIGH articles are what a filter most needs more of.
        rows.sort(key=lambda i: (-(aggregate(cfg, train.targets[i]).weighted_average >= medium), i))
        plans[group] = [(train.records[rows[k % len(rows)]], k // len(rows) + 1) for k in range(need)]
    return plans, empty


def run(ctx: Context) -> Outcome:
    params = Params.model_validate(dict(ctx.params))
    real = load_labelled(ctx.train_data, ctx.package.config.dimension_names, filter_name=ctx.package.name)
    counts = under_represented(real, ctx.package, params.by, params.min_examples)
    wanted = {g: min(params.min_examples - n, params.max_per_group) for g, n in counts.items()}
    candidate = start_candidate(ctx)
    checkpoint = ctx.checkpoints / SYNTHETIC_FILE
    with ctx.meter.running("augment: generate"):
        prepare_candidate(ctx, candidate, params)
        train = candidate.work.split("train", candidate.package.config)
        # ctx.train_data holds no held-out article; should one slip in, no variant of it is made either.
        real_train = train.subset([i for i, rid in enumerate(train.ids) if rid not in ctx.heldout_ids])
        plans, empty = plan_synthetic(real_train, candidate.package, wanted, params.by)
        made = {str(r["id"]): r for r in read_rows(checkpoint)}
        reused = len(made)
        for group, pairs in plans.items():
            for source, variant in pairs:
                rid = f"{source['id']}~{variant}"
                if rid in made:
                    continue
                ctx.meter.check(f"generation for {group}")
                made[rid] = _synthetic_row(source, variant, ctx.seed)
                _append(checkpoint, made[rid])
    planned_ids = {f"{s['id']}~{v}" for pairs in plans.values() for s, v in pairs}
    synthetic = [made[rid] for rid in sorted(planned_ids)]
    _add_to_train(candidate.work, synthetic)
    with ctx.meter.running("augment: train"):
        train_probe(ctx, candidate, params, folds=1)
        student: dict[str, Any] = {}
        if candidate.package.config.stage2 is not None:
            outcome = run_student(candidate.package, candidate.work, device=ctx.device, max_train=params.max_train,
                                  seed=ctx.seed, progress=metered(ctx), **params.student)
            student = {"student_validation_mae": mean_mae(outcome.validation_mae)}
        figures = finish_candidate(ctx, candidate)
    per_group = Counter(g for g, pairs in plans.items() for _ in pairs)
    notes = {"mode": params.mode, "groups": {g: {"real": counts[g], "synthetic": per_group[g]}
                                             for g in wanted},
             "groups_without_train_rows": empty, "synthetic_rows": len(synthetic),
             "reused_from_checkpoint": min(reused, len(synthetic)), "synthetic_file": str(checkpoint),
             "real_train_rows": len(train), **figures}
    return Outcome(package_dir=candidate.package.path, notes=notes,
                   metrics={"synthetic_rows": float(len(synthetic)), **student})


def _add_to_train(work: Workspace, rows: Iterable[dict[str, Any]]) -> None:
    """Append synthetic rows to the train split (and to their own file beside the splits)."""
    rows = list(rows)
    body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    with (work.splits / "train.jsonl").open("ab") as fh:
        fh.write(body)
    (work.splits / SYNTHETIC_FILE).write_bytes(body)
