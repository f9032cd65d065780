"""The stages wired for a batch: screen → probe → escalate, each a function over a batch.

The batch command calls :meth:`Pipeline.score`; the stream agents call the three stages separately,
carrying :class:`Screened` and :class:`Escalation` items between workers on Kafka topics. Both run
exactly this code, so a record is the same whichever path produced it.

Models load once per :class:`Pipeline` (and the encoder and student bases once per process, through
the loaders' caches): one embedding per article per encoder, shared by every filter's probe and by the
commerce classifier; one student base per base model, with one LoRA adapter per filter.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scoring.aggregate import PercentileNormalizer, aggregate
from scoring.article import Article
from scoring.calibration import Calibration
from scoring.commerce import CommerceDetector, CommerceEvidence
from scoring.embedding import EmbeddingKey, EmbeddingStore, embed, load_embedder
from scoring.exceptions import PackageError, ScoringError
from scoring.models import fluxscore_version
from scoring.package import FilterPackage, resolve_many, search_roots
from scoring.prefilter import Prefilter
from scoring.probe import Probe
from scoring.records import (
    CommerceResult,
    DimensionScore,
    FilterRef,
    InputStats,
    Normalized,
    PrefilterResult,
    ScoreRecord,
    StageUsed,
    text_hash,
)
from scoring.settings import ScoringSettings, resolve_device
from scoring.student import StudentPool
from scoring.text import article_text


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


UNKNOWN_LANGUAGE = "unknown"
_LANGUAGE = re.compile(r"^[a-z]{2,8}$")
# A detector reads the start of the text only: enough to tell a language, and its cost stays flat.
_DETECT_CHARS = 2000


@cache
def _detector() -> Callable[[str], str] | None:
    """A deterministic language identifier when one is installed (py3langid or langid), else None.

    Deterministic matters: the language is part of the record, which must come out byte-identical
    when an article is scored again (langdetect is random unless seeded, so it is not used)."""
    for module in ("py3langid", "langid"):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        return lambda text: str(lib.classify(text)[0])
    return None


def _language(article: Article, text: str) -> str:
    given = (article.language or "").strip().lower().replace("_", "-").split("-")[0]
    if _LANGUAGE.match(given):
        return given
    detect = _detector()
    if detect is None or not text.strip():
        return UNKNOWN_LANGUAGE
    guessed = detect(text[:_DETECT_CHARS]).lower()
    return guessed if _LANGUAGE.match(guessed) else UNKNOWN_LANGUAGE


def input_stats(article: Article, text: str) -> InputStats:
    """Text length and language of an article, as every record of it carries them (for drift monitoring)."""
    return InputStats(text_chars=len(text), language=_language(article, text))


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Screened(_Wire):
    """An article past validation and prefilters, on its way to the embedding stage."""

    article: Article
    text: str
    commerce: CommerceEvidence | None = None
    open_filters: dict[str, PrefilterResult] = Field(description="filter name -> its (passed) prefilter result")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class Escalation(_Wire):
    """A (article, filter) pair whose probe estimate reached the filter's escalation threshold."""

    article_id: str
    text: str
    filter: str
    package_hash: str
    stage1_raw: list[float]
    stage1_estimate: float
    prefilter: PrefilterResult
    commerce: CommerceResult | None = None
    input: InputStats | None = None
    # The stage-1 models the probe worker ran, so the stage-2 record names those, not the model worker's.
    model_revisions: dict[str, str] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)

    @property
    def adapter(self) -> str:
        return self.filter


@dataclass
class LoadedFilter:
    """A filter package with its runtime parts opened."""

    package: FilterPackage
    prefilter: Prefilter
    probe: Probe
    calibration: Calibration
    normalizer: PercentileNormalizer | None
    ref: FilterRef = field(init=False)

    def __post_init__(self) -> None:
        self.ref = FilterRef(name=self.package.name, version=self.package.version,
                             package_hash=self.package.package_hash)

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def embedding_key(self) -> EmbeddingKey:
        """Filters with equal keys share one embedding per article."""
        return EmbeddingKey.of(self.package.config)

    @classmethod
    def open(cls, package: FilterPackage, *, device: str = "cpu") -> LoadedFilter:
        package.require_files()
        cfg = package.config
        probe = Probe.load(package.file(cfg.stage1.probe), package.file(cfg.stage1.probe_meta), device=device)
        if list(probe.dimensions) != cfg.dimension_names:
            raise PackageError(f"probe of {package.ref} predicts {probe.dimensions}, config has "
                               f"{cfg.dimension_names}", filter=package.ref, path=str(package.path))
        if probe.embedding_model != cfg.stage1.embedding_model:
            # A probe read on another encoder's embeddings would score noise without any error.
            raise PackageError(f"probe of {package.ref} was trained on {probe.embedding_model!r}, config names "
                               f"{cfg.stage1.embedding_model!r}", filter=package.ref, path=str(package.path))
        calibration = Calibration.load(package.file(cfg.calibration) if cfg.calibration else None)
        normalizer = PercentileNormalizer.load(package.file(cfg.normalization)) if cfg.normalization else None
        return cls(package=package, prefilter=Prefilter(cfg.prefilter), probe=probe, calibration=calibration,
                   normalizer=normalizer)

    def model_hashes(self, commerce: CommerceDetector | None) -> dict[str, str]:
        hashes = dict(self.package.model_hashes)
        if commerce is not None:
            hashes["commerce"] = commerce.package_hash
        return hashes


@dataclass
class Pipeline:
    """Every stage for a set of filters. Not thread-safe: one per worker loop."""

    filters: dict[str, LoadedFilter]
    commerce: CommerceDetector | None
    device: str = "cpu"
    stage1_batch: int = 64
    stage2_batch: int = 16
    students: StudentPool | None = None
    # Prefilter and probe workers never run stage 2: loading a 1B-parameter base there would waste its memory.
    load_students: bool = True
    # Redelivered or re-published articles are not encoded twice (the stream workers' Redis).
    embedding_store: EmbeddingStore | None = None
    # The development override (FLUXSCORE_ALLOW_UNVERIFIED_MODELS): serve packages whose files do not match
    # their export manifest. Off, every package is verified before any of its model files is opened.
    allow_unverified: bool = False
    # The package search roots this pipeline was loaded from: hot reload resolves new versions there too.
    roots: list[Path] = field(default_factory=list)

    @classmethod
    def load(cls, refs: str | Sequence[str] | Sequence[FilterPackage], *,
             settings: ScoringSettings | None = None, commerce: bool = True, students: bool = True) -> Pipeline:
        settings = settings or ScoringSettings.from_env()
        device = resolve_device(settings.device)
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        roots = search_roots(settings.filters_path)
        if isinstance(refs, str):
            packages = resolve_many(refs, roots)
        else:
            packages = [resolve_many(r, roots)[0] if isinstance(r, str) else r for r in refs]
        unverified = settings.allow_unverified_models
        detector = (CommerceDetector.load(settings.commerce_package, verify=True, allow_unverified=unverified)
                    if commerce else None)
        pipeline = cls(filters={}, commerce=detector, device=device, stage1_batch=settings.stage1_batch,
                       stage2_batch=settings.stage2_batch, load_students=students, allow_unverified=unverified,
                       roots=roots)
        for package in packages:
            pipeline.add(package)
        return pipeline

    # -- filter set management (hot reload swaps one filter at a time) ---------------------------

    def add(self, package: FilterPackage) -> LoadedFilter:
        """Open a package and make it live, replacing an older version of the same filter."""
        # Here rather than in the loaders: hot reload comes through here too, and training opens
        # packages it is still building (no manifest yet) with the loaders directly.
        package.verify(allow_unverified=self.allow_unverified)
        loaded = LoadedFilter.open(package, device=self.device)
        if package.has_stage2 and self.load_students:
            if self.students is None:
                self.students = StudentPool(device=self.device, batch_size=self.stage2_batch)
            self.students.register(package)
        old = self.filters.get(package.name)
        self.filters[package.name] = loaded
        if old is not None and old.package.ref != package.ref and self.students is not None \
                and old.package.has_stage2:
            self.students.unregister(old.package.ref)
        load_embedder(package.config.stage1.embedding_model, self.device)
        return loaded

    def remove(self, name: str) -> None:
        old = self.filters.pop(name, None)
        if old is not None and old.package.has_stage2 and self.students is not None:
            self.students.unregister(old.package.ref)

    # -- stage 0: validation + prefilters ---------------------------------------------------------

    def _blocked(self, loaded: LoadedFilter, article_id: str, stage: StageUsed, prefilter: PrefilterResult,
                 commerce: CommerceResult | None, timings: dict[str, float],
                 stats: InputStats | None = None, *, text: str,
                 revisions: dict[str, str] | None = None) -> ScoreRecord:
        cfg = loaded.package.config
        agg = aggregate(cfg, [0.0] * len(cfg.dimensions))
        return ScoreRecord(article_id=article_id, filter=loaded.ref, text_hash=text_hash(text),
                           model_hashes=loaded.model_hashes(self.commerce), model_revisions=dict(revisions or {}),
                           fluxscore_version=fluxscore_version(), stage=stage, weighted_average=0.0, tier=agg.tier,
                           prefilter=prefilter, commerce=commerce, input=stats, timings_ms=dict(timings))

    def _revision(self, model: str) -> str:
        """What an encoder this pipeline ran was loaded from (computed once, when it was loaded)."""
        return load_embedder(model, self.device).revision

    def screen(self, articles: Sequence[Article]) -> tuple[list[ScoreRecord], list[Screened]]:
        """Commerce rules, then each filter's prefilter. Blocked pairs become final records."""
        records: list[ScoreRecord] = []
        screened: list[Screened] = []
        for article in articles:
            start = time.perf_counter()
            text = article_text(article)
            evidence = self.commerce.evidence(article, text) if self.commerce else None
            early = self.commerce.early_verdict(evidence) if self.commerce and evidence else None
            stats = input_stats(article, text)
            open_filters: dict[str, PrefilterResult] = {}
            for name, loaded in self.filters.items():
                result = loaded.prefilter.check(article, text)
                if early is not None and early.blocked and loaded.package.config.prefilter.block_commerce:
                    records.append(self._blocked(loaded, article.id, StageUsed.COMMERCE, result, early,
                                                 {"prefilter": _ms(start)}, stats, text=text))
                elif not result.passed:
                    records.append(self._blocked(loaded, article.id, StageUsed.PREFILTER, result, early,
                                                 {"prefilter": _ms(start)}, stats, text=text))
                else:
                    open_filters[name] = result
            if open_filters:
                screened.append(Screened(article=article, text=text, commerce=evidence, open_filters=open_filters,
                                         timings_ms={"prefilter": _ms(start)}))
        return records, screened

    # -- stage 1: one embedding per article, every probe -----------------------------------------

    def _embed(self, screened: Sequence[Screened]) -> dict[EmbeddingKey, np.ndarray]:
        keys = {f.embedding_key for f in self.filters.values()}
        texts = [s.text for s in screened]
        return {key: embed(load_embedder(key.model, self.device), key, texts, self.stage1_batch, self.embedding_store)
                for key in keys}

    def _commerce_key(self) -> EmbeddingKey:
        """The embedding the commerce classifier was trained on: shared when a filter's key is equal."""
        assert self.commerce is not None
        return EmbeddingKey.of_commerce(self.commerce.config)

    def probe(self, screened: Sequence[Screened]) -> tuple[list[ScoreRecord], list[Escalation]]:
        """Embed once, classify commerce, run every open filter's probe; route final or escalate."""
        if not screened:
            return [], []
        start = time.perf_counter()
        embeddings = self._embed(screened)
        embed_ms = _ms(start) / len(screened)
        commerce_results: list[CommerceResult | None] = [None] * len(screened)
        if self.commerce is not None:
            key = self._commerce_key()
            if key not in embeddings:
                embeddings[key] = embed(load_embedder(key.model, self.device), key, [s.text for s in screened],
                                        self.stage1_batch, self.embedding_store)
            evidence = [s.commerce for s in screened]
            if all(e is not None for e in evidence):
                commerce_results = list(self.commerce.classify(evidence, embeddings[key]))  # type: ignore[arg-type]

        # Provenance: the encoders these records' scores came from.
        commerce_revision = ({"commerce_embedding_model": self._revision(self._commerce_key().model)}
                             if self.commerce is not None else {})
        records: list[ScoreRecord] = []
        escalations: list[Escalation] = []
        # From what the screened item carries (text and the article's language field), so the stats are
        # the same whether the item came in-process or over Kafka (where the article's content is dropped).
        stats = [input_stats(s.article, s.text) for s in screened]
        for name, loaded in self.filters.items():
            rows = [i for i, s in enumerate(screened) if name in s.open_filters]
            if not rows:
                continue
            t0 = time.perf_counter()
            emb = embeddings[loaded.embedding_key][rows]
            raw = loaded.probe.predict(emb)
            cfg = loaded.package.config
            calibrated = loaded.calibration.apply("stage1", cfg.dimension_names, raw)
            probe_ms = _ms(t0) / len(rows)
            filter_revision = {"embedding_model": self._revision(loaded.embedding_key.model)}
            for j, i in enumerate(rows):
                item = screened[i]
                commerce = commerce_results[i]
                timings = {**item.timings_ms, "embed": round(embed_ms, 3), "probe": round(probe_ms, 3)}
                prefilter = item.open_filters[name]
                if commerce is not None and commerce.blocked and cfg.prefilter.block_commerce:
                    records.append(self._blocked(loaded, item.article.id, StageUsed.COMMERCE, prefilter, commerce,
                                                 timings, stats[i], text=item.text, revisions=commerce_revision))
                    continue
                revisions = {**filter_revision, **(commerce_revision if commerce is not None else {})}
                estimate = aggregate(cfg, calibrated[j]).uncapped_average
                if loaded.package.has_stage2 and cfg.stage1.escalates(estimate):
                    escalations.append(Escalation(
                        article_id=item.article.id, text=item.text, filter=name,
                        package_hash=loaded.ref.package_hash, stage1_raw=[float(v) for v in raw[j]],
                        stage1_estimate=estimate, prefilter=prefilter, commerce=commerce, input=stats[i],
                        model_revisions=revisions, timings_ms=timings))
                else:
                    records.append(self._final(loaded, item.article.id, StageUsed.STAGE1, raw[j], calibrated[j],
                                               estimate, prefilter, commerce, timings, stats=stats[i],
                                               text=item.text, revisions=revisions))
        return records, escalations

    # -- stage 2: the students -------------------------------------------------------------------

    def escalate(self, escalations: Sequence[Escalation]) -> list[ScoreRecord]:
        """Score escalated pairs with each filter's student, grouped by adapter."""
        by_filter: dict[str, list[Escalation]] = defaultdict(list)
        for item in escalations:
            loaded = self.filters.get(item.filter)
            if loaded is None:
                raise ScoringError("escalation names a filter this worker does not run", article_id=item.article_id,
                                   filter=item.filter, stage="stage2")
            by_filter[item.filter].append(item)
        records: list[ScoreRecord] = []
        for name, items in by_filter.items():
            loaded = self.filters[name]
            cfg = loaded.package.config
            if self.students is None or not loaded.package.has_stage2:
                why = "filter has no stage-2 model" if not loaded.package.has_stage2 or self.load_students \
                    else "this pipeline was loaded without students"
                raise ScoringError(why, filter=loaded.package.ref, stage="stage2")
            t0 = time.perf_counter()
            raw = self.students.predict(loaded.package.ref, [e.text for e in items])
            calibrated = loaded.calibration.apply("stage2", cfg.dimension_names, raw)
            student_ms = _ms(t0) / len(items)
            revisions = {"base_model": self.students.revision(loaded.package.ref)}
            for j, item in enumerate(items):
                timings = {**item.timings_ms, "student": round(student_ms, 3)}
                records.append(self._final(loaded, item.article_id, StageUsed.STAGE2, raw[j], calibrated[j],
                                           item.stage1_estimate, item.prefilter, item.commerce, timings,
                                           stale_hash=item.package_hash, stats=item.input, text=item.text,
                                           revisions={**item.model_revisions, **revisions}))
        return records

    # -- record building ---------------------------------------------------------------------------

    def _final(self, loaded: LoadedFilter, article_id: str, stage: StageUsed, raw: np.ndarray,
               calibrated: np.ndarray, estimate: float, prefilter: PrefilterResult,
               commerce: CommerceResult | None, timings: dict[str, float],
               stale_hash: str | None = None, stats: InputStats | None = None, *, text: str,
               revisions: dict[str, str]) -> ScoreRecord:
        cfg = loaded.package.config
        agg = aggregate(cfg, calibrated)
        dims = {d: DimensionScore(raw=round(float(r), 4), calibrated=round(float(c), 4))
                for d, r, c in zip(cfg.dimension_names, raw, calibrated, strict=True)}
        normalized = (Normalized(method=loaded.normalizer.method, value=loaded.normalizer(agg.weighted_average))
                      if loaded.normalizer else None)
        hashes = loaded.model_hashes(self.commerce)
        # The threshold is the package's, on every record (probe-only packages hold one too): a reader
        # can tell from any record what routing produced it without opening the package.
        if stale_hash is not None and stale_hash != loaded.ref.package_hash:
            # Escalated under a version that was hot-swapped since: say so instead of hiding it.
            hashes["stage1_package_hash"] = stale_hash
        return ScoreRecord(
            article_id=article_id, filter=loaded.ref, text_hash=text_hash(text), model_hashes=hashes,
            model_revisions=dict(revisions), fluxscore_version=fluxscore_version(), stage=stage,
            stage1_estimate=round(estimate, 4), escalation_threshold=cfg.stage1.threshold,
            dimensions=dims, weighted_average=agg.weighted_average, tier=agg.tier,
            gatekeeper_applied=agg.gatekeeper_applied, gatekeeper_dimension=agg.gatekeeper_dimension,
            normalized=normalized, prefilter=prefilter, commerce=commerce, input=stats, timings_ms=timings)

    # -- all stages in-process ---------------------------------------------------------------------

    def score(self, articles: Sequence[Article]) -> list[ScoreRecord]:
        """Every stage over one batch, in-process: the batch command and the streaming baseline."""
        records, screened = self.screen(articles)
        final, escalations = self.probe(screened)
        records.extend(final)
        records.extend(self.escalate(escalations))
        return records

    def score_stream(self, articles: Iterable[Article], batch_size: int | None = None) -> Iterable[list[ScoreRecord]]:
        batch: list[Article] = []
        size = batch_size or self.stage1_batch
        for article in articles:
            batch.append(article)
            if len(batch) >= size:
                yield self.score(batch)
                batch = []
        if batch:
            yield self.score(batch)

    @property
    def refs(self) -> list[str]:
        return [f.package.ref for f in self.filters.values()]

    def describe(self) -> dict[str, object]:
        return {name: {"version": f.package.version, "package_hash": f.ref.package_hash,
                       "path": str(f.package.path), "stage2": f.package.has_stage2}
                for name, f in self.filters.items()}


def package_paths(pipeline: Pipeline) -> dict[str, Path]:
    return {name: f.package.path for name, f in pipeline.filters.items()}
