"""Held-out evaluation of a candidate package against its parent, with a paired bootstrap of the lift.

Both packages score the round's held-out articles through the serving pipeline
(:class:`scoring.pipeline.Pipeline`: prefilter rules, probe, escalation to the student at the package's
threshold, calibration, tiers), so a candidate is judged on what it would serve. The commerce classifier
is left out for both (it is not part of a filter package and is the same for parent and candidate); an
article a filter's prefilter blocks scores 0 on every dimension and LOW, as serving records it.

Every metric is a mean of per-article values (absolute errors, hits), so the lift's confidence interval
comes from resampling held-out articles with replacement and scoring parent and candidate on the same
resample (paired). ``articles_per_s`` is resampled over the scoring batches instead (a rate has no
per-article value): batch sizes and seconds are kept for that.

Lifts are signed so that better is positive: for MAE it is parent − candidate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoring.aggregate import Tier
from scoring.article import validate_article
from scoring.package import FilterPackage
from training.dataset import LabelledSet, load_labelled
from training.evolve.exceptions import EvolveError

BATCH = 32
RESAMPLES = 1000
_RANK = {Tier.LOW: 0, Tier.MEDIUM: 1, Tier.HIGH: 2}


@dataclass
class Scored:
    """One package's held-out scores, in the order of the labelled set."""

    ref: str
    package_hash: str
    pred: np.ndarray                 # calibrated scores (articles × dimensions); 0 where blocked
    tiers: list[str]
    batch_sizes: list[int]
    batch_seconds: list[float]
    cached: bool = False             # embeddings from the training cache: the rate is not the serving rate

    @property
    def articles_per_s(self) -> float:
        if self.cached:
            return float("nan")
        return sum(self.batch_sizes) / max(sum(self.batch_seconds), 1e-9)


def heldout_set(path: Path, package: FilterPackage) -> LabelledSet:
    data = load_labelled(path, package.config.dimension_names, filter_name=package.name)
    if not len(data):
        raise EvolveError(f"{path}: no held-out article has labels for {package.ref} "
                          f"({len(data.skipped)} skipped)")
    return data


def score(package: FilterPackage, data: LabelledSet, *, device: str = "cpu", batch: int = BATCH,
          cache_dir: Path | None = None) -> Scored:
    """Score the held-out articles through the serving pipeline (the package must be exported: verified).

    With ``cache_dir`` stage-1 embeddings come from the training cache (the same vectors, so the same
    scores, without encoding every held-out article again for every candidate); the rate is then not the
    serving rate, and ``articles_per_s`` is left out (NaN)."""
    from scoring.pipeline import Pipeline

    store = None
    if cache_dir is not None:
        from scoring.embcache import DiskEmbeddingStore

        store = DiskEmbeddingStore(cache_dir)
    pipeline = Pipeline(filters={}, commerce=None, device=device, embedding_store=store)
    pipeline.add(package)
    articles = [validate_article(r) for r in data.records]
    dims = package.config.dimension_names
    by_id: dict[str, Any] = {}
    pipeline.score(articles[:2])  # load the encoder and student before timing
    sizes, seconds = [], []
    for start in range(0, len(articles), batch):
        chunk = articles[start:start + batch]
        t0 = time.perf_counter()
        records = pipeline.score(chunk)
        seconds.append(time.perf_counter() - t0)
        sizes.append(len(chunk))
        by_id.update({r.article_id: r for r in records})
    pred = np.zeros((len(articles), len(dims)))
    tiers = []
    for i, article in enumerate(articles):
        record = by_id.get(article.id)
        if record is None:
            raise EvolveError(f"{package.ref}: no score for held-out article {article.id}")
        if record.dimensions:
            pred[i] = [record.dimensions[d].calibrated for d in dims]
        tiers.append(str(record.tier.value))
    return Scored(ref=package.ref, package_hash=package.package_hash, pred=pred, tiers=tiers,
                  batch_sizes=sizes, batch_seconds=seconds, cached=store is not None)


def per_article(metric: str, scored: Scored, data: LabelledSet, package: FilterPackage) -> np.ndarray:
    """The per-article values whose mean is the metric, signed so that a higher mean is better (negated
    errors for MAE); recall has values only for the articles the oracle put at MEDIUM or HIGH."""
    name, _, dim = metric.partition(":")
    if name == "mae":
        err = np.abs(scored.pred - data.targets)
        if dim:
            err = err[:, package.config.dimension_names.index(dim)][:, None]
        return -err.mean(axis=1)
    truth = [_RANK[t] for t in data.tiers(package.config)]
    pred = [_RANK[Tier(t)] for t in scored.tiers]
    if name == "tier_accuracy":
        return np.asarray([float(a == b) for a, b in zip(truth, pred, strict=True)])
    if name == "recall_medium_high":
        return np.asarray([float(b >= 1) for a, b in zip(truth, pred, strict=True) if a >= 1])
    raise EvolveError(f"metric {metric!r} has no per-article values")


@dataclass
class Lift:
    metric: str
    parent: float              # the metric itself (MAE as MAE, not negated)
    candidate: float
    lift: float                # better is positive
    ci_low: float
    ci_high: float
    n: int                     # articles (or batches, for articles_per_s) the interval resampled
    resamples: int
    parent_articles_per_s: float
    candidate_articles_per_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def compare(metric: str, parent: Scored, candidate: Scored, data: LabelledSet, package: FilterPackage, *,
            resamples: int = RESAMPLES, seed: int = 0) -> Lift:
    """The candidate's lift over the parent on ``metric`` with a paired 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    sign = -1.0 if metric.startswith("mae") else 1.0   # report MAE as MAE; per-article values are negated
    if metric == "articles_per_s":
        if parent.cached or candidate.cached:
            raise EvolveError("articles_per_s needs both packages scored without the embedding cache")
        ps, pt = np.asarray(parent.batch_sizes, float), np.asarray(parent.batch_seconds)
        cs, ct = np.asarray(candidate.batch_sizes, float), np.asarray(candidate.batch_seconds)
        if len(ps) != len(cs):
            raise EvolveError("parent and candidate were scored in different batches")
        idx = rng.integers(0, len(ps), (resamples, len(ps)))
        boot = cs[idx].sum(1) / np.maximum(ct[idx].sum(1), 1e-9) - ps[idx].sum(1) / np.maximum(pt[idx].sum(1), 1e-9)
        p_val, c_val = parent.articles_per_s, candidate.articles_per_s
        lift, n = c_val - p_val, len(ps)
    else:
        pv, cv = per_article(metric, parent, data, package), per_article(metric, candidate, data, package)
        if not len(pv):
            nan = float("nan")
            return Lift(metric, nan, nan, nan, nan, nan, 0, resamples, parent.articles_per_s,
                        candidate.articles_per_s)
        idx = rng.integers(0, len(pv), (resamples, len(pv)))
        boot = cv[idx].mean(1) - pv[idx].mean(1)
        p_val, c_val = sign * float(pv.mean()), sign * float(cv.mean())
        lift, n = float(cv.mean() - pv.mean()), len(pv)
    low, high = _interval(boot)
    return Lift(metric=metric, parent=p_val, candidate=c_val, lift=lift, ci_low=low, ci_high=high, n=n,
                resamples=resamples, parent_articles_per_s=parent.articles_per_s,
                candidate_articles_per_s=candidate.articles_per_s)


def evaluate(parent: FilterPackage, candidate: FilterPackage, heldout: Path, metric: str, *, device: str = "cpu",
             resamples: int = RESAMPLES, seed: int = 0, parent_scores: Scored | None = None,
             cache_dir: Path | None = None) -> Lift:
    """Score both on the held-out file and compare them (pass ``parent_scores`` to score the parent once;
    ``cache_dir`` is ignored for ``articles_per_s``, which times the serving path as it is)."""
    cache = None if metric == "articles_per_s" else cache_dir
    if candidate.config.dimension_names != parent.config.dimension_names:
        raise EvolveError(f"{candidate.ref} scores dimensions {candidate.config.dimension_names}, its parent "
                          f"{parent.ref} {parent.config.dimension_names}: they cannot be compared")
    data = heldout_set(heldout, parent)
    base = parent_scores or score(parent, data, device=device, cache_dir=cache)
    return compare(metric, base, score(candidate, data, device=device, cache_dir=cache), data, parent,
                   resamples=resamples, seed=seed)

