"""Per-filter windows of score records and article texts: what the monitor and the offline report keep.

Memory is bounded whatever the stream: the reference holds at most ``reference_size`` rows (a package
profile is thinned to that), the current window ``window`` rows (and, with ``max_age``, only rows that
arrived in the last ``max_age`` seconds), the text sample ``sample_size`` texts of at most
:data:`SAMPLE_TEXT_CHARS` characters each, the repeat filter :data:`SEEN_KEYS` keys, and at most
:data:`MAX_FILTERS` filters are tracked.

A report is due for a filter after ``every`` new records (a window by count) or, with ``interval``,
when that many seconds passed since its last report and new records came (a window by time).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from scoring.drift import PROJECTION_DIMS, PROJECTION_SEED, ReferenceProfile, Row, monitor_row, project
from scoring.embedding import EmbeddingKey
from scoring.exceptions import FluxscoreError
from scoring.package import DriftAlerts, FilterPackage
from scoring.records import ScoreRecord
from scoring.settings import ScoringSettings
from streams.drift.report import MIN_VALUES, DriftResult, Reference, ReferenceKind, WindowInputs, evaluate_window

log = logging.getLogger("fluxscore.streams.monitor")

SEEN_KEYS = 200_000
MAX_FILTERS = 64
# Longer texts keep their head and tail: the encoder reads head + tail tokens only (a few thousand
# characters at most), and a sample of 64 articles of 800 kB each would otherwise hold 50 MB.
SAMPLE_TEXT_CHARS = 20_000

Embedder = Callable[[EmbeddingKey, list[str]], np.ndarray]
PackageLookup = Callable[[str, str, str], FilterPackage | None]


def sample_text(text: str) -> str:
    if len(text) <= SAMPLE_TEXT_CHARS:
        return text
    head = SAMPLE_TEXT_CHARS * 3 // 5
    return text[:head] + "\n\n" + text[-(SAMPLE_TEXT_CHARS - head):]


def _spread(items: Sequence[Any], keep: int) -> list[Any]:
    if len(items) <= keep:
        return list(items)
    return [items[int(i * len(items) / keep)] for i in range(keep)]


@dataclass
class FilterWindows:
    """One filter version's reference and current window."""

    name: str
    package_hash: str
    version: str
    reference_size: int
    window: int
    sample_size: int = 0
    reference: list[Row] = field(default_factory=list)
    reference_kind: ReferenceKind = "window"
    reference_detail: str = ""
    reference_embeddings: np.ndarray | None = None
    reference_texts: list[str] = field(default_factory=list)
    thresholds: DriftAlerts = field(default_factory=DriftAlerts)
    embedding_key: EmbeddingKey | None = None
    embedding_note: str | None = None
    projection: tuple[int, int] = (PROJECTION_DIMS, PROJECTION_SEED)
    created_at: float = 0.0
    current: deque[Row] = field(init=False)
    arrived: deque[float] = field(init=False)
    texts: deque[str] = field(init=False)
    since_report: int = 0
    last_report_at: float = 0.0
    seq: int = 0
    first_seen: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.current = deque(maxlen=self.window)
        self.arrived = deque(maxlen=self.window)
        self.texts = deque(maxlen=max(self.sample_size, 1))
        self.last_report_at = self.created_at

    @property
    def fixed_reference(self) -> bool:
        return self.reference_kind != "window"

    @property
    def filling(self) -> bool:
        """A production-window reference still taking its first records."""
        return not self.fixed_reference and len(self.reference) < self.reference_size

    def add(self, row: Row, now: float = 0.0) -> None:
        if self.filling:
            self.reference.append(row)
            if not self.filling:
                # The reference is pinned: the texts sampled so far are its embedding sample.
                self.reference_texts = list(self.texts)
                self.texts.clear()
            return
        self.current.append(row)
        self.arrived.append(now)
        self.since_report += 1

    def add_text(self, text: str) -> None:
        if self.sample_size > 0:
            self.texts.append(sample_text(text))

    def expire(self, now: float, max_age: float) -> None:
        if max_age <= 0:
            return
        while self.arrived and now - self.arrived[0] > max_age:
            self.arrived.popleft()
            self.current.popleft()


@dataclass
class Pending:
    """A report taken from the live windows, to be computed (embeddings included) off the event loop."""

    inputs: WindowInputs
    windows: FilterWindows
    texts: list[str]
    reference_texts: list[str]


class DriftTracker:
    """Windows per filter, from score records (and, for embedding drift, sampled article texts)."""

    def __init__(self, *, reference_size: int, window: int, every: int, interval: float = 0.0,
                 max_age: float = 0.0, sample_size: int = 0, reference_records: Iterable[ScoreRecord] = (),
                 reference_name: str = "reference file", use_package_reference: bool = True,
                 lookup: PackageLookup | None = None, embedder: Embedder | None = None,
                 clock: Callable[[], float] = time.monotonic, max_filters: int = MAX_FILTERS) -> None:
        self.reference_size, self.window, self.every = reference_size, window, every
        self.interval, self.max_age, self.sample_size = interval, max_age, sample_size
        self.use_package_reference = use_package_reference
        self.lookup, self.embedder, self.clock, self.max_filters = lookup, embedder, clock, max_filters
        self.filters: dict[str, FilterWindows] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._fixed: dict[str, list[Row]] = {}
        self._fixed_name = reference_name
        self._refused: set[str] = set()
        self._packages: dict[tuple[str, str, str], FilterPackage | None] = {}
        for record in reference_records:
            rows = self._fixed.setdefault(record.filter.name, [])
            rows.append(monitor_row(record))
        for name, rows in self._fixed.items():
            self._fixed[name] = _spread(rows, reference_size)

    # -- input -----------------------------------------------------------------------------------

    def add(self, record: ScoreRecord) -> bool:
        """Take one record; False for a repeat (a redelivered record re-emitted as stored) or a refused one."""
        key = record.key
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN_KEYS:
            self._seen.popitem(last=False)
        windows = self._windows_for(record)
        if windows is None:
            return False
        windows.add(monitor_row(record), self.clock())
        return True

    def add_text(self, filters: Iterable[str], text: str) -> None:
        """An article text the probe of each of ``filters`` read (from ``articles.screened``)."""
        if self.sample_size <= 0:
            return
        for name in filters:
            windows = self.filters.get(name)
            if windows is not None:
                windows.add_text(text)

    def _package(self, name: str, version: str, package_hash: str) -> FilterPackage | None:
        key = (name, version, package_hash)
        if key not in self._packages:
            found = None
            if self.lookup is not None:
                try:
                    found = self.lookup(name, version, package_hash)
                except (FluxscoreError, OSError) as exc:
                    log.warning("package of monitored records not found; default thresholds, no profile",
                                extra={"filter": name, "version": version, "error": str(exc)})
            self._packages[key] = found
        return self._packages[key]

    def _windows_for(self, record: ScoreRecord) -> FilterWindows | None:
        name, ref = record.filter.name, record.filter
        windows = self.filters.get(name)
        if windows is not None and windows.package_hash == ref.package_hash:
            return windows
        if windows is None and len(self.filters) >= self.max_filters:
            if name not in self._refused:
                self._refused.add(name)
                log.warning("too many filters to monitor; records of this one are not watched",
                            extra={"filter": name, "max_filters": self.max_filters})
            return None
        if windows is not None:
            log.info("new package version: drift reference restarts", extra={"filter": name, "version": ref.version})
        windows = self._new_windows(name, ref.version, ref.package_hash)
        self.filters[name] = windows
        return windows

    def _new_windows(self, name: str, version: str, package_hash: str) -> FilterWindows:
        package = self._package(name, version, package_hash)
        windows = FilterWindows(name, package_hash, version, self.reference_size, self.window, self.sample_size,
                                created_at=self.clock(),
                                thresholds=package.config.drift.alerts if package else DriftAlerts())
        if package is not None:
            windows.embedding_key = EmbeddingKey.of(package.config)
        elif self.sample_size > 0:
            windows.embedding_note = (f"no installed package {name}@{version} with hash {package_hash}: its "
                                      "encoder is unknown")
        if self.sample_size <= 0:
            windows.embedding_note = "embedding sample disabled (FLUXSCORE_MONITOR_EMBEDDING_SAMPLE=0)"
        fixed = self._fixed.get(name)
        if fixed:
            windows.reference, windows.reference_kind = list(fixed), "file"
            windows.reference_detail = f"{self._fixed_name}: {len(fixed)} records of {name}"
            windows.embedding_note = windows.embedding_note or "a reference file of records holds no embeddings"
            return windows
        profile = self._profile(package) if package is not None and self.use_package_reference else None
        if profile is not None and package is not None:
            windows.reference, windows.reference_kind = _spread(profile.rows, self.reference_size), "package"
            windows.reference_detail = (f"{package.config.drift.reference} of {package.ref} (package {package_hash}): "
                                        f"{profile.source}")
            sample = profile.embeddings
            key = windows.embedding_key
            if sample is not None and key is not None and (sample.model, sample.prefix, sample.head_tokens,
                                                           sample.tail_tokens) == tuple(key):
                windows.reference_embeddings = np.asarray(_spread(list(sample.array()), self.reference_size))
                windows.projection = (sample.dims, sample.seed)
            elif self.sample_size > 0:
                windows.embedding_note = "the package profile holds no embeddings of this encoder"
            return windows
        windows.reference_detail = (f"first {self.reference_size} records of {name}@{version} "
                                    f"(package {package_hash}) seen from {windows.first_seen.isoformat()}")
        return windows

    def _profile(self, package: FilterPackage) -> ReferenceProfile | None:
        rel = package.config.drift.reference
        if not rel:
            return None
        try:
            return ReferenceProfile.load(package.file(rel))
        except FluxscoreError as exc:
            log.warning("drift reference profile unreadable; the first records are the reference",
                        extra={"filter": package.ref, "error": str(exc)})
            return None

    # -- reports ---------------------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[tuple[str, str]]:
        """(filter, trigger) of every filter whose next report is due: ``count`` or ``time``."""
        now = self.clock() if now is None else now
        found = []
        for name, w in self.filters.items():
            w.expire(now, self.max_age)
            if len(w.reference) < MIN_VALUES or len(w.current) < MIN_VALUES or w.since_report == 0:
                continue
            if w.since_report >= self.every:
                found.append((name, "count"))
            elif self.interval > 0 and now - w.last_report_at >= self.interval:
                found.append((name, "time"))
        return found

    def take(self, name: str, trigger: str) -> Pending:
        """Copy one filter's windows for a report and start its next window."""
        w = self.filters[name]
        w.seq += 1
        inputs = WindowInputs(
            filter=name, version=w.version, package_hash=w.package_hash, seq=w.seq, trigger=trigger,
            reference=Reference(w.reference_kind, w.reference_detail, list(w.reference), w.reference_embeddings),
            rows=list(w.current), new_rows=w.since_report, thresholds=w.thresholds,
            embedding_note=w.embedding_note, first_seen=w.first_seen)
        w.since_report = 0
        w.last_report_at = self.clock()
        return Pending(inputs, w, list(w.texts), [] if w.reference_embeddings is not None else list(w.reference_texts))

    def run(self, pending: Pending, *, with_snapshot: bool = True) -> DriftResult:
        """Embed the sampled texts (when there is an encoder) and evaluate; blocking, so off the event loop."""
        inputs, w = pending.inputs, pending.windows
        key = w.embedding_key
        if key is not None and self.embedder is not None and self.sample_size > 0 and inputs.embedding_note is None:
            dims, seed = w.projection
            try:
                if inputs.reference.embeddings is None and len(pending.reference_texts) >= MIN_VALUES:
                    w.reference_embeddings = project(self.embedder(key, pending.reference_texts), dims, seed)
                    w.reference_texts = []
                    inputs.reference.embeddings = w.reference_embeddings
                if inputs.reference.embeddings is None:
                    inputs.embedding_note = "too few articles sampled while the reference was taken"
                elif len(pending.texts) < MIN_VALUES:
                    inputs.embedding_note = (f"only {len(pending.texts)} articles sampled in this window "
                                             f"(need {MIN_VALUES})")
                else:
                    inputs.embeddings = project(self.embedder(key, pending.texts), dims, seed)
            except Exception as exc:
                # Embedding drift is one part of the report: without the encoder the rest still counts.
                inputs.embedding_note = f"embedding failed: {type(exc).__name__}: {str(exc)[:200]}"
                log.warning("drift sample could not be embedded", extra={"filter": inputs.filter,
                                                                          "error": inputs.embedding_note})
        elif key is not None and self.embedder is None and inputs.embedding_note is None:
            inputs.embedding_note = "no encoder in this process"
        return evaluate_window(inputs, with_snapshot=with_snapshot)


def package_lookup(roots: Sequence[Path]) -> PackageLookup:
    """Finds the installed package a record names (``name@version`` whose hash matches the record's)."""
    from scoring.package import resolve

    def lookup(name: str, version: str, package_hash: str) -> FilterPackage | None:
        package = resolve(f"{name}@{version}", roots)
        return package if package.package_hash == package_hash else None

    return lookup


def stage1_embedder(scoring: ScoringSettings, store: Any = None) -> Embedder:
    """Embeds texts with a filter's encoder and cut, exactly as the probe does (through ``store`` if given)."""
    from scoring.embedding import embed, load_embedder
    from scoring.settings import resolve_device

    device = resolve_device(scoring.device)

    def run(key: EmbeddingKey, texts: list[str]) -> np.ndarray:
        return embed(load_embedder(key.model, device), key, texts, scoring.stage1_batch, store)

    return run
