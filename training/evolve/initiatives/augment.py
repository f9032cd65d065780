"""Targeted augmentation: synthetic rows for the tiers, languages or domains the real data has too few of.

Groups are the oracle tier, the ``language``, the ``source`` or the ``source_type`` of each real labelled
row (``params.by``); a group with fewer than ``params.min_examples`` real rows in ``ctx.train_data`` gets
synthetic rows until it reaches that count (at most ``params.max_per_group``).

``mode: paraphrase`` rewrites real rows of the group, positives (MEDIUM and HIGH)
first, offline and deterministically: the sentences of each paragraph are put in another order, the
paragraphs after the lede are too, and every other variant takes its title from its own first sentence.
What an article says, and therefore its label, stays; what the models see changes, which is what a
few-shot group needs to stop being memorised. The label of the source row is kept as it is.

``mode: oracle`` asks the LLM, through the oracle client (:class:`training.oracle.ArticleGenerator`), for
each planned (source row, variant) to write a new article reporting the same facts as the source, in the
group's language, for the source's kind and tier (a grounded rewrite: see :mod:`training.oracle.generate`),
and then labels it with the filter's own prompt through :func:`training.oracle.label_articles` (the path of
``fluxscore train label``): its scores are the oracle's, never the source's. The oracle settings are the
process's (``FLUXSCORE_ORACLE_*``) unless ``params.oracle`` names ``provider``, ``model``, ``base_url`` or
``api_key_env``. One request at a time, the meter checked before each: a generated article is appended to
``checkpoints/oracle_generated.jsonl`` before it is labelled, labels go to ``checkpoints/oracle_labelled.jsonl``
(rejects beside it), and the finished row to ``checkpoints/synthetic.jsonl`` before the next request, so a
rerun neither generates nor labels twice. A row the oracle fails on (generation or labelling, after the
retries) is skipped and its reason counted in the notes (``skipped``); a rerun tries it again.

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

import asyncio
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from scoring.aggregate import Tier, aggregate
from scoring.article import Article
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
from training.oracle import ArticleGenerator, GenerationRequest, LabelEvent, OracleSettings, label_articles
from training.steps import (
    Workspace,
    run_student,
)

GENERATOR = "fluxscore.evolve.paraphrase"
ORACLE_GENERATOR = "fluxscore.evolve.oracle"
SYNTHETIC_FILE = "synthetic.jsonl"
GENERATED_FILE = "oracle_generated.jsonl"
LABELLED_FILE = "oracle_labelled.jsonl"
REJECTS_FILE = "oracle_rejects.jsonl"
# -- augmentation ------------------------------------------------------------------------------------

GroupBy = Literal["tier", "language", "source", "source_type"]


class OracleParams(BaseModel):
    """The oracle settings a plan may name; what it leaves out comes from ``FLUXSCORE_ORACLE_*``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["openai", "gemini"] | None = Field(None, description="`openai` or `gemini`")
    model: str | None = Field(None, description="model name sent to the API")
    base_url: str | None = Field(None, description="API base URL")
    api_key_env: str | None = Field(None, description="name of the variable holding the API key")

    def settings(self) -> OracleSettings:
        # Keyword values take precedence over the environment in the settings layer.
        return OracleSettings(**self.model_dump(exclude_none=True))


class Params(CandidateParams):
    mode: Literal["paraphrase", "oracle"] = Field("paraphrase", description=(
        "paraphrase: offline rewrites of real rows of the group (sentence and paragraph order, titles); "
        "oracle: new articles on the source's facts written by the LLM, then labelled by the oracle"))
    oracle: OracleParams = Field(default_factory=OracleParams, description=(
        "mode oracle: provider, model, base_url, api_key_env (default: the FLUXSCORE_ORACLE_* settings)"))
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
        generator = ORACLE_GENERATOR if params.mode == "oracle" else GENERATOR
        # Only rows of this mode count as made: a checkpoint of the other mode is not this one's work.
        made = {str(r["id"]): r for r in read_rows(checkpoint) if (r.get("metadata") or {}).get("generator")
                == generator}
        reused = len(made)
        skipped: Counter[str] = Counter()
        oracle_notes: dict[str, Any] = {}
        if params.mode == "oracle":
            tiers = dict(zip(real_train.ids, (t.value for t in real_train.tiers(candidate.package.config)),
                             strict=True))
            oracle_notes = _oracle_rows(ctx, candidate.package, params.oracle.settings(), plans, tiers, made,
                                        checkpoint, skipped)
        else:
            for group, pairs in plans.items():
                for source, variant in pairs:
                    rid = _row_id(source, variant, params.mode)
                    if rid in made:
                        continue
                    ctx.meter.check(f"generation for {group}")
                    made[rid] = _synthetic_row(source, variant, ctx.seed)
                    _append(checkpoint, made[rid])
    planned_ids = {_row_id(s, v, params.mode) for pairs in plans.values() for s, v in pairs}
    synthetic = [made[rid] for rid in sorted(planned_ids) if rid in made]
    _add_to_train(candidate.work, synthetic)
    with ctx.meter.running("augment: train"):
        train_probe(ctx, candidate, params, folds=1)
        student: dict[str, Any] = {}
        if candidate.package.config.stage2 is not None:
            outcome = run_student(candidate.package, candidate.work, device=ctx.device, max_train=params.max_train,
                                  seed=ctx.seed, progress=metered(ctx), **params.student)
            student = {"student_validation_mae": mean_mae(outcome.validation_mae)}
        figures = finish_candidate(ctx, candidate)
    per_group = Counter(g for g, pairs in plans.items() for s, v in pairs if _row_id(s, v, params.mode) in made)
    notes = {"mode": params.mode, "groups": {g: {"real": counts[g], "synthetic": per_group[g]}
                                             for g in wanted},
             "groups_without_train_rows": empty, "planned_rows": len(planned_ids), "synthetic_rows": len(synthetic),
             "reused_from_checkpoint": min(reused, len(synthetic)), "synthetic_file": str(checkpoint),
             "real_train_rows": len(train), **oracle_notes, **figures}
    if params.mode == "oracle":
        notes["skipped"] = dict(sorted(skipped.items()))
    return Outcome(package_dir=candidate.package.path, notes=notes,
                   metrics={"synthetic_rows": float(len(synthetic)), **student})


def _row_id(source: dict[str, Any], variant: int, mode: str) -> str:
    return f"{source['id']}~{variant}" if mode == "paraphrase" else f"{source['id']}~oracle{variant}"


def _oracle_article(source: dict[str, Any], variant: int, rid: str, title: str, content: str, model: str,
                    group: str) -> Article:
    """The generated article as a record: the source's kind, language and date, none of its labels or
    metadata (its word count, its generator: not this text's)."""
    keep = ("source", "source_type", "language", "published_date", "tags")
    fields: dict[str, Any] = {k: source[k] for k in keep if source.get(k) is not None}
    if isinstance(source.get("url"), str):
        fields["url"] = f"{source['url']}#synthetic-oracle{variant}"
    fields["metadata"] = {"synthetic": True, "synthetic_of": str(source["id"]), "generator": ORACLE_GENERATOR,
                          "model": model, "variant": variant, "group": group}
    return Article.model_validate({**fields, "id": rid, "title": title, "content": content})


def _oracle_rows(ctx: Context, package: FilterPackage, settings: OracleSettings,
                 plans: dict[str, list[tuple[dict[str, Any], int]]], tiers: dict[str, str],
                 made: dict[str, dict[str, Any]], checkpoint: Path, skipped: Counter[str]) -> dict[str, Any]:
    """Generate and label the planned rows not yet in ``made``, one request at a time; each finished row is
    appended to ``checkpoint`` before the next request. Returns the request counts for the notes."""
    generated_path = ctx.checkpoints / GENERATED_FILE
    labelled_path = ctx.checkpoints / LABELLED_FILE
    rejects_path = ctx.checkpoints / REJECTS_FILE
    generated = {str(r["id"]): r for r in read_rows(generated_path)}
    labelled = {str(r["id"]): r for r in read_rows(labelled_path)}
    dims = tuple((d.name, d.description) for d in package.config.dimensions)
    counts = {"generation_requests": 0, "labelling_requests": 0, "generated_reused": 0, "labels_reused": 0}

    failed: set[str] = set()  # a row two groups plan is asked for (and counted) once

    async def work() -> None:
        async with ArticleGenerator(settings) as gen:
            for group, pairs in plans.items():
                for source, variant in pairs:
                    rid = _row_id(source, variant, "oracle")
                    if rid in made or rid in failed:
                        continue
                    if rid in generated:
                        article = Article.model_validate(generated[rid])
                        counts["generated_reused"] += 1
                    else:
                        ctx.meter.check(f"oracle generation for {group}")
                        language = source.get("language") if isinstance(source.get("language"), str) else None
                        request = GenerationRequest(
                            request_id=rid, source_title=str(source.get("title") or ""),
                            source_content=str(source.get("content") or ""), language=language,
                            source=source.get("source"), source_type=source.get("source_type"),
                            tier=tiers.get(str(source["id"])), variant=variant, filter_name=package.name,
                            dimensions=dims)
                        result = await gen.generate(request)
                        if result.article is None:
                            failed.add(rid)
                            skipped[f"generation: {result.reason}"] += 1
                            continue
                        article = _oracle_article(source, variant, rid, result.article.title,
                                                  result.article.content, settings.model, group)
                        generated[rid] = article.to_dict()
                        _append(generated_path, generated[rid])
                    if rid not in labelled:
                        ctx.meter.check(f"oracle labelling for {group}")
                        events: list[LabelEvent] = []
                        # label_articles starts its own limiter; waiting on the generator's first keeps the
                        # two kinds of request together within the configured rate.
                        await gen.limiter.acquire()
                        summary = await label_articles(package, [article], labelled_path, rejects_path, settings,
                                                       events.append)
                        counts["labelling_requests"] += summary.requests
                        done = [e for e in events if e.kind in ("labelled", "rejected")]
                        if not done or done[-1].kind == "rejected":
                            failed.add(rid)
                            skipped[f"labelling: {done[-1].detail if done else 'no outcome'}"] += 1
                            continue
                        labelled[rid] = next(r for r in reversed(read_rows(labelled_path)) if r.get("id") == rid)
                    else:
                        counts["labels_reused"] += 1
                    made[rid] = labelled[rid]
                    _append(checkpoint, made[rid])
            counts["generation_requests"] = gen.requests

    asyncio.run(work())
    return {**counts, "oracle_model": settings.model, "oracle_provider": settings.provider}


def _add_to_train(work: Workspace, rows: Iterable[dict[str, Any]]) -> None:
    """Append synthetic rows to the train split (and to their own file beside the splits)."""
    rows = list(rows)
    body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    with (work.splits / "train.jsonl").open("ab") as fh:
        fh.write(body)
    (work.splits / SYNTHETIC_FILE).write_bytes(body)
