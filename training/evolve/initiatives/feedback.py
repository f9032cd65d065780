"""Initiative ``feedback``: continue training the current adapter on the recent high-value feedback.

The rows are what people said in the last ``hours`` hours, and what downstream consumers did:

- **human labels** from the label store (source ``human``, labelled in the window), several per article
  averaged per dimension;
- **corrections** (``correction`` events on ``feedback.<filter>``, :mod:`training.feedback`): a person's
  scores; the latest in the window wins over the human labels of the same article, and dimensions it
  leaves out are taken from them. Events carry no text: the text is the label store's (any label of the
  article) or the round's data (``ctx.train_data``); a correction of an article known to neither is
  counted and left out;
- **engagement** (click, share, dwell, report… in the window) weights rows: an article's value is the sum
  of ``event_weights[event] x weight`` over its events, and its row weight is ``1 + value`` kept within
  ``[min_weight, max_weight]``. Engagement never makes a label: an engaged article enters training only
  when it has one (a human or oracle label in the store, or its row in the round's data).

No held-out article (``ctx.heldout_ids``) is read, nor any article of the candidate's own validation,
calibration and test splits (cut from ``ctx.train_data``), which choose its epoch and calibrate it.

Training continues the parent's adapter (its LoRA weights and regression head) through
:func:`training.student.train_student`'s ``init_adapter``, with the package's head+tail cut and max length.
Each epoch's adapter is a checkpoint under ``ctx.checkpoints``; a rerun after a stop goes on from the last
one (the learning-rate schedule restarts over the epochs left, and the seed moves on by the epochs done).
The epoch with the best validation MAE becomes the candidate's adapter, which is then calibrated (stage 2;
the probe and its maps are the parent's), gated against the probe and exported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scoring.package import FilterPackage, load_package
from training.dataset import load_labelled
from training.evolve.base import Context, Outcome
from training.evolve.exceptions import EvolveError
from training.evolve.initiatives._candidate import new_candidate, workspace
from training.feedback import CORRECTION, engagement_value, sample_weight
from training.steps import Workspace, run_calibrate, run_export, run_prepare, run_threshold

STATE = "state.json"


class Params(BaseModel):
    """The plan's ``params`` of a ``feedback`` initiative."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hours: float = Field(72.0, gt=0, description="the window: labels and events of the last this many hours")
    until: datetime | None = Field(None, description="the end of the window (default: when the initiative starts)")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 0.5, "share": 2.0, "dwell": 0.01, "report": -1.0},
        description="value of one unit of an event's weight, per event kind (negative lowers a row's weight); "
                    "kinds not named count nothing")
    min_weight: float = Field(0.1, ge=0.0, description="lowest row weight (0 lets reports drop a row)")
    max_weight: float = Field(10.0, gt=0.0, description="highest row weight")
    min_rows: int = Field(1, ge=1, description="fewer feedback rows than this: no candidate")
    replay: int = Field(0, ge=0, description="older training rows of the round's data mixed in (weight 1), "
                                             "so the adapter keeps what it knew")
    epochs: int = Field(2, ge=1)
    lr: float = Field(5e-5, ge=0.0, description="LoRA learning rate: lower than from scratch, it continues")
    head_lr: float = Field(2e-4, ge=0.0, description="regression head learning rate")
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(8, ge=1)
    fractions: tuple[float, float, float, float] = Field(
        (0.6, 0.1, 0.15, 0.15), description="train, validation, calibration, test split of the round's data")

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.min_weight > self.max_weight:
            raise ValueError(f"min_weight {self.min_weight:g} exceeds max_weight {self.max_weight:g}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {sum(self.fractions):g}")
        if self.until is not None and self.until.tzinfo is None:
            raise ValueError("until needs a time zone")
        return self


@dataclass
class FeedbackRows:
    """The rows to train on, and what was left out and why (for the notes)."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    targets: list[list[float]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)   # human | correction | engaged | replay
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, article_id: str, text: str, scores: list[float], weight: float, source: str) -> None:
        self.ids.append(article_id)
        self.texts.append(text)
        self.targets.append(scores)
        self.weights.append(weight)
        self.sources.append(source)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> str:
        body = json.dumps([self.ids, self.targets, self.weights], sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]


def feedback_rows(package: FilterPackage, params: Params, *, labels_db: str | None, train_data: Path,
                  exclude: frozenset[str], until: datetime, replay_pool: Sequence[tuple[str, str, list[float]]] = ()
                  ) -> FeedbackRows:
    """The weighted rows of the window ``(until - hours, until]``; ``exclude`` holds ids never to read."""
    from training.labels import Label, LabelStore

    cfg = package.config
    dims = cfg.dimension_names
    since = until - timedelta(hours=params.hours)
    rows = FeedbackRows()
    human: dict[str, list[Label]] = {}
    known_text: dict[str, str] = {}
    stored_scores: dict[str, dict[str, float]] = {}   # oracle labels in the store: engaged articles' labels
    events = []
    if labels_db:
        store = LabelStore(labels_db)
        try:
            for label in store.labels(cfg.name):
                if label.text and label.article_id not in known_text:
                    known_text[label.article_id] = label.text
                if label.source == "oracle":
                    stored_scores.setdefault(label.article_id, label.scores)
            for label in store.labels(cfg.name, source="human", since=since):
                if _aware(label.labelled_at) <= until:
                    human.setdefault(label.article_id, []).append(label)
            events = [s.event for s in store.feedback(cfg.name, since=since) if s.event.at <= until]
        finally:
            store.close()
    data = load_labelled(train_data, dims, filter_name=cfg.name)
    data_rows = {rid: (text, [float(v) for v in data.targets[i]]) for i, (rid, text) in
                 enumerate(zip(data.ids, data.texts, strict=True))}

    corrections: dict[str, dict[str, float]] = {}
    for event in sorted((e for e in events if e.event == CORRECTION), key=lambda e: e.at):
        corrections[event.article_id] = dict(event.scores or {})   # the latest wins
    value = engagement_value((e for e in events if e.event != CORRECTION), params.event_weights)
    rows.count("events in window", len(events))
    rows.count("unvalued events", sum(1 for e in events if e.event != CORRECTION
                                      and e.event not in params.event_weights))

    def text_of(article_id: str) -> str | None:
        if article_id in known_text:
            return known_text[article_id]
        found = data_rows.get(article_id)
        return found[0] if found else None

    def weight_of(article_id: str) -> float:
        return sample_weight(value.get(article_id, 0.0), floor=params.min_weight, cap=params.max_weight)

    candidates = sorted(set(human) | set(corrections) | set(value))
    for article_id in candidates:
        if article_id in exclude:
            rows.count("left out: held out or a judging split")
            continue
        scores: dict[str, float] = {}
        source = ""
        if article_id in human:
            labels = human[article_id]
            scores = {d: float(np.mean([lb.scores[d] for lb in labels if d in lb.scores]))
                      for d in dims if any(d in lb.scores for lb in labels)}
            source = "human"
        if article_id in corrections:
            scores = {**scores, **{d: v for d, v in corrections[article_id].items() if d in dims}}
            source = "correction"
        if not source:
            # Engagement only: it weights the article's existing label, it never makes one.
            if article_id in stored_scores:
                scores = dict(stored_scores[article_id])
            elif article_id in data_rows:
                scores = dict(zip(dims, data_rows[article_id][1], strict=True))
            else:
                rows.count("left out: engagement on an unlabelled article")
                continue
            source = "engaged"
        if any(d not in scores for d in dims):
            rows.count("left out: label lacks a dimension")
            continue
        text = text_of(article_id)
        if not text:
            rows.count("left out: no text known for the article")
            continue
        weight = weight_of(article_id)
        if weight <= 0:
            rows.count("left out: weight 0 (reports)")
            continue
        rows.add(article_id, text, [scores[d] for d in dims], weight, source)
        rows.count(f"rows: {source}")
    taken = set(rows.ids)
    for article_id, text, targets in list(replay_pool)[:params.replay]:
        if article_id in taken or article_id in exclude:
            continue
        rows.add(article_id, text, targets, 1.0, "replay")
        rows.count("rows: replay")
    return rows


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- continuing an adapter ---------------------------------------------------------------------------

def _read_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    tmp.replace(path)


def continue_adapter(ctx: Context, package: FilterPackage, rows: FeedbackRows, val_texts: Sequence[str],
                     val_targets: np.ndarray, params: Params) -> dict[str, Any]:
    """Train the parent's adapter on ``rows``, one checkpoint per epoch; returns the state (epochs, best)."""
    from training.student import EpochEnd, StudentRecipe, TrainProgress, train_student

    cfg = package.config
    parent_adapter = ctx.package.file(cfg.stage2.adapter) if cfg.stage2 else None
    if cfg.stage2 is None or parent_adapter is None or not parent_adapter.is_dir():
        raise EvolveError(f"{ctx.package.ref} has no trained adapter to continue", initiative=ctx.initiative)
    recipe = StudentRecipe(epochs=params.epochs, lr=params.lr, head_lr=params.head_lr,
                           weight_decay=params.weight_decay, batch_size=params.batch_size,
                           head_tokens=cfg.preprocessing.head_tokens, tail_tokens=cfg.preprocessing.tail_tokens,
                           max_length=cfg.stage2.max_length, seed=ctx.seed)
    root = ctx.checkpoints / "feedback"
    state_file = root / STATE
    fingerprint = {"rows": rows.digest(), "parent": ctx.package.model_hashes.get("adapter"),
                   "recipe": {k: v for k, v in asdict(recipe).items() if k != "epochs"}}
    state = _read_state(state_file)
    if state.get("fingerprint") != fingerprint:
        # Other rows, parent or recipe: earlier checkpoints are of another run.
        shutil.rmtree(root, ignore_errors=True)
        state = {"fingerprint": fingerprint, "epochs": []}
    root.mkdir(parents=True, exist_ok=True)
    done = len(state["epochs"])
    if done >= params.epochs:
        return state
    start_from = root / f"epoch-{done}" if done else parent_adapter
    w = np.asarray(rows.weights, dtype=np.float32)

    def on_start(val_mae: float) -> None:
        # Written before the first step, so a stop during epoch 1 keeps what the parent scored.
        state["parent_val_mae"] = val_mae
        _write_state(state_file, state)

    def on_step(p: TrainProgress) -> None:
        if p.phase == "train":
            ctx.progress(f"feedback epoch {done + p.epoch}/{params.epochs}", p.step, p.steps)
            ctx.meter.check(f"feedback epoch {done + p.epoch}, step {p.step}")

    def on_epoch(end: EpochEnd) -> None:
        epoch = done + end.epoch
        end.save(root / f"epoch-{epoch}")
        state["epochs"].append({"epoch": epoch, "val_mae": end.record["val_mae"],
                                "train_loss": end.record["train_loss"]})
        _write_state(state_file, state)

    # A resumed run's seed moves on, so its epochs do not replay the first run's order and dropout.
    left = {**asdict(recipe), "epochs": params.epochs - done, "seed": ctx.seed + done}
    train_student(rows.texts, np.asarray(rows.targets, dtype=np.float32), cfg.dimension_names,
                  cfg.stage2.base_model, ctx.work / "scratch-adapter", sample_weights=w / w.mean(),
                  val_texts=list(val_texts), val_targets=np.asarray(val_targets, dtype=np.float32),
                  device=ctx.device, progress=on_step, init_adapter=start_from, on_epoch=on_epoch,
                  on_start=None if "parent_val_mae" in state else on_start, **left)
    return state


# -- the initiative ----------------------------------------------------------------------------------

def _split_ids(ws: Workspace, package: FilterPackage, names: Sequence[str]) -> set[str]:
    return {rid for name in names for rid in ws.split(name, package.config).ids}


def run(ctx: Context) -> Outcome:
    from training.steps import portable_adapter

    params = Params.model_validate(dict(ctx.params))
    parent = ctx.package
    cfg = parent.config
    if cfg.stage2 is None or not parent.file(cfg.stage2.adapter).is_dir():
        return Outcome(package_dir=None, notes={"skipped": f"{parent.ref} has no stage-2 adapter to continue"})
    until = params.until or datetime.now(UTC)
    window = {"from": (until - timedelta(hours=params.hours)).isoformat(), "until": until.isoformat()}
    with ctx.meter.running("feedback-rows"):
        candidate = new_candidate(ctx, "feedback")
        ws = workspace(ctx)
        run_prepare(ctx.train_data, candidate, ws, fractions=params.fractions, seed=ctx.seed)
        judging = _split_ids(ws, candidate, ("validation", "calibration", "test"))
        train = ws.split("train", cfg)
        pool = [(rid, text, [float(v) for v in train.targets[i]])
                for i, (rid, text) in enumerate(zip(train.ids, train.texts, strict=True))]
        order = np.random.default_rng(ctx.seed).permutation(len(pool))
        rows = feedback_rows(candidate, params, labels_db=ctx.labels_db, train_data=ctx.train_data,
                             exclude=ctx.heldout_ids | judging, until=until,
                             replay_pool=[pool[i] for i in order])
    feedback_count = sum(1 for s in rows.sources if s != "replay")
    notes: dict[str, Any] = {"window": window, "rows": len(rows), "feedback_rows": feedback_count,
                             "counts": dict(sorted(rows.counts.items())),
                             "weights": {"min": min(rows.weights, default=0.0), "max": max(rows.weights, default=0.0),
                                         "mean": float(np.mean(rows.weights)) if rows.weights else 0.0}}
    if feedback_count < params.min_rows:
        notes["skipped"] = (f"{feedback_count} feedback rows in the window, fewer than min_rows "
                            f"{params.min_rows}: nothing to train")
        return Outcome(package_dir=None, notes=notes)
    val = ws.split("validation", cfg)
    with ctx.meter.running("feedback-epochs"):
        state = continue_adapter(ctx, candidate, rows, val.texts, val.targets, params)
    best = min(state["epochs"], key=lambda e: (e["val_mae"], e["epoch"]))
    with ctx.meter.running("feedback-finish"):
        adapter = candidate.file(cfg.stage2.adapter)
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(ctx.checkpoints / "feedback" / f"epoch-{best['epoch']}", adapter)
        portable_adapter(adapter, cfg.stage2.base_model)
        run_calibrate(load_package(candidate.path), ws, device=ctx.device, stages=("stage2",),
                      progress=ctx.progress, seed=ctx.seed)
        choice = run_threshold(load_package(candidate.path), ws, device=ctx.device, progress=ctx.progress,
                               seed=ctx.seed, gate_student=True)
        exported = run_export(candidate.path, ws, None)
    notes.update({"epochs": state["epochs"], "best_epoch": best["epoch"],
                  "parent_validation_mae": state["parent_val_mae"], "validation_mae": best["val_mae"],
                  "routing": choice.routing.decision if choice.routing is not None else None,
                  "threshold": choice.threshold, "package_hash": exported.package_hash})
    return Outcome(package_dir=exported.package.path, notes=notes,
                   metrics={"validation_mae": float(best["val_mae"]),
                            "parent_validation_mae": float(state["parent_val_mae"]),
                            "feedback_rows": float(feedback_count)})
