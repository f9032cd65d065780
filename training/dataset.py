"""Oracle-labelled data: loading either label layout, de-duplication, and tier-stratified splits.

Two layouts are read, chosen per record by the filter's dimension names:

- ``{"oracle": {"scores": {dim: 0-10, ...}}}`` — fluxscore's own labeller and the shared data;
- ``{"<filter>_analysis": {dim: number | {"score": number, ...}}}`` — the original system's layout, with
  the dimensions optionally nested under ``"dimensions"``.

A record that lacks a dimension is reported and left out, never zero-filled: a zero is a real score.
Near-duplicate texts (syndicated copies, re-crawls) are grouped, and a group always lands in one split,
so a test set never contains the twin of a training article.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scoring.aggregate import Tier, aggregate
from scoring.article import validate_article
from scoring.exceptions import ArticleValidationError
from scoring.package import FilterConfig
from scoring.text import article_text
from training.exceptions import TrainingDataError

SPLITS = ("train", "validation", "calibration", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.1, 0.1)
MANIFEST = "manifest.json"


@dataclass
class LabelledSet:
    """Records (as read) with their targets in dimension order and their model input texts."""

    records: list[dict[str, Any]]
    targets: np.ndarray
    dimensions: list[str]
    texts: list[str]
    layouts: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id or line, reason)
    # dimension -> records skipped because their labels lack it (or hold no number for it)
    missing: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [str(r.get("id")) for r in self.records]

    def subset(self, rows: Sequence[int] | np.ndarray) -> LabelledSet:
        idx = [int(i) for i in rows]
        return LabelledSet(records=[self.records[i] for i in idx], targets=self.targets[idx],
                           dimensions=list(self.dimensions), texts=[self.texts[i] for i in idx],
                           layouts=Counter(), skipped=[])

    def tiers(self, config: FilterConfig) -> list[Tier]:
        return [aggregate(config, row).tier for row in self.targets]

    def weighted(self, config: FilterConfig) -> np.ndarray:
        """Oracle weighted averages after gatekeepers (what the tiers are cut from)."""
        return np.asarray([aggregate(config, row).weighted_average for row in self.targets])


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def _score_of(value: Any) -> float | None:
    if isinstance(value, dict):
        return _number(value.get("score"))
    return _number(value)


def _candidates(record: dict[str, Any], filter_name: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(layout, mapping of dimension -> score-ish) in order of preference."""
    oracle = record.get("oracle")
    if isinstance(oracle, dict) and isinstance(oracle.get("scores"), dict):
        yield "oracle.scores", oracle["scores"]
    keys = [f"{filter_name}_analysis"] if filter_name else []
    keys += sorted(k for k in record if k.endswith("_analysis") and k not in keys)
    for key in keys:
        analysis = record.get(key)
        if isinstance(analysis, dict):
            inner = analysis.get("dimensions")
            yield key, inner if isinstance(inner, dict) else analysis


def extract_scores(record: dict[str, Any], dimensions: Sequence[str],
                   filter_name: str | None = None) -> tuple[list[float] | None, str]:
    """Scores in dimension order and the layout they came from, or (None, reason)."""
    scores, reason, _ = _extract(record, dimensions, filter_name)
    return scores, reason


def _extract(record: dict[str, Any], dimensions: Sequence[str],
             filter_name: str | None) -> tuple[list[float] | None, str, list[str]]:
    """As :func:`extract_scores`, plus the dimensions the best layout lacks."""
    best_missing: list[str] | None = None
    best_layout = ""
    for layout, mapping in _candidates(record, filter_name):
        found = {d: _score_of(mapping.get(d)) for d in dimensions}
        missing = [d for d, v in found.items() if v is None]
        if not missing:
            scores = [float(v) for v in found.values() if v is not None]
            bad = [f"{d}={v}" for d, v in zip(dimensions, scores, strict=True) if not 0.0 <= v <= 10.0]
            if bad:
                return None, f"{layout}: scores outside 0-10: {', '.join(bad)}", []
            return scores, layout, []
        if best_missing is None or len(missing) < len(best_missing):
            best_missing, best_layout = missing, layout
    if best_missing is None:
        return None, "no labels (neither oracle.scores nor a *_analysis field)", []
    return None, f"{best_layout}: missing or non-numeric {', '.join(best_missing)}", best_missing


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, record or None, error or None) for every non-blank line."""
    with Path(path).open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield lineno, None, f"not valid JSON: {exc}"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, "not a JSON object"
                continue
            yield lineno, obj, None


def load_labelled(source: Path | Iterable[dict[str, Any]], dimensions: Sequence[str], *,
                  filter_name: str | None = None) -> LabelledSet:
    """Read labelled records; unusable ones (bad JSON, invalid article, missing labels) are skipped
    with a reason, so the caller can report them."""
    dims = list(dimensions)
    if not dims:
        raise TrainingDataError("no dimensions given to read labels for", step="load")
    rows: Iterable[tuple[int, dict[str, Any] | None, str | None]]
    if isinstance(source, str | Path):
        if not Path(source).is_file():
            raise TrainingDataError(f"labelled data file {source} does not exist", step="load")
        rows = read_jsonl(Path(source))
    else:
        rows = ((i, r, None) for i, r in enumerate(source, 1))
    records: list[dict[str, Any]] = []
    targets: list[list[float]] = []
    texts: list[str] = []
    layouts: Counter[str] = Counter()
    skipped: list[tuple[str, str]] = []
    missing: Counter[str] = Counter()
    for lineno, record, error in rows:
        if record is None:
            skipped.append((f"line {lineno}", error or "unreadable"))
            continue
        rid = record.get("id")
        where = rid if isinstance(rid, str) and rid.strip() else f"line {lineno}"
        scores, layout, lacking = _extract(record, dims, filter_name)
        if scores is None:
            skipped.append((where, layout))
            missing.update(lacking)
            continue
        try:
            article = validate_article(record)
        except ArticleValidationError as exc:
            skipped.append((where, f"invalid article: {exc}"))
            continue
        text = article_text(article)
        if not text:
            skipped.append((where, "empty title and content"))
            continue
        records.append(record)
        targets.append(scores)
        texts.append(text)
        layouts[layout] += 1
    matrix = np.asarray(targets, dtype=np.float64).reshape(len(targets), len(dims))
    return LabelledSet(records=records, targets=matrix, dimensions=dims, texts=texts, layouts=layouts,
                       skipped=skipped, missing=missing)


def infer_dimensions(path: Path, *, sample: int = 50) -> tuple[list[str], str | None]:
    """Dimension names (and the filter name, when the layout tells it) found in a labelled file."""
    counts: Counter[tuple[str, ...]] = Counter()
    names: dict[tuple[str, ...], str | None] = {}
    for seen, (_, record, _) in enumerate(read_jsonl(path)):
        if seen >= sample:
            break
        if record is None:
            continue
        for layout, mapping in _candidates(record, None):
            dims = tuple(k for k, v in mapping.items() if _score_of(v) is not None)
            if dims:
                counts[dims] += 1
                oracle = record.get("oracle")
                name = (oracle.get("filter") if isinstance(oracle, dict) else None) if layout == "oracle.scores" \
                    else layout.removesuffix("_analysis")
                names.setdefault(dims, name if isinstance(name, str) else None)
                break
    if not counts:
        raise TrainingDataError(f"{path}: no record carries oracle.scores or a *_analysis field", step="load")
    dims, _ = counts.most_common(1)[0]
    return list(dims), names.get(dims)


# -- near-duplicates ----------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)
_PRIME = (1 << 61) - 1


def normalise(text: str) -> list[str]:
    """Lower-cased, accent-folded word tokens: what near-duplicate detection compares."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _WORD.findall(folded)


def shingles(words: Sequence[str], k: int = 5) -> set[int]:
    if len(words) < k:
        return {zlib.crc32(" ".join(words).encode())} if words else set()
    return {zlib.crc32(" ".join(words[i:i + k]).encode()) for i in range(len(words) - k + 1)}


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_groups(texts: Sequence[str], *, threshold: float = 0.7, num_perm: int = 64,
                          bands: int = 16, seed: int = 1) -> np.ndarray:
    """Group id per text (the smallest member index): texts whose word 5-gram Jaccard similarity
    reaches ``threshold`` are joined, transitively. MinHash + LSH banding finds candidate pairs,
    the exact Jaccard confirms them, so cost stays near-linear in the number of texts."""
    n = len(texts)
    sets = [shingles(normalise(t)) for t in texts]
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
    rows = num_perm // bands
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for i, s in enumerate(sets):
        if not s:
            continue
        x = np.fromiter(s, dtype=np.uint64, count=len(s))
        # Multiply-add hashing mod 2^64 (numpy wraps): a cheap universal hash family for MinHash.
        sig = ((np.outer(a, x) + b[:, None]) % np.uint64(_PRIME)).min(axis=1)
        for band in range(bands):
            key = (band, sig[band * rows:(band + 1) * rows].tobytes())
            buckets.setdefault(key, []).append(i)
    uf = _UnionFind(n)
    checked: set[tuple[int, int]] = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        for j in range(1, len(members)):
            pair = (members[0], members[j])
            if pair in checked:
                continue
            checked.add(pair)
            if jaccard(sets[pair[0]], sets[pair[1]]) >= threshold:
                uf.union(*pair)
        for j in range(1, len(members)):
            for k in range(j + 1, len(members)):
                pair = (members[j], members[k])
                if pair not in checked and uf.find(pair[0]) != uf.find(pair[1]):
                    checked.add(pair)
                    if jaccard(sets[pair[0]], sets[pair[1]]) >= threshold:
                        uf.union(*pair)
    return np.asarray([uf.find(i) for i in range(n)], dtype=np.int64)


@dataclass
class DedupReport:
    duplicate_ids: list[str] = field(default_factory=list)
    identical_texts: list[tuple[str, str]] = field(default_factory=list)  # (dropped id, kept id)
    near_duplicate_groups: int = 0
    near_duplicate_members: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"duplicate_ids": self.duplicate_ids, "identical_texts": self.identical_texts,
                "near_duplicate_groups": self.near_duplicate_groups,
                "near_duplicate_members": self.near_duplicate_members}


def deduplicate(data: LabelledSet, *, threshold: float = 0.7) -> tuple[LabelledSet, np.ndarray, DedupReport]:
    """Drop repeated ids and identical texts (first kept); group near-duplicates.

    Returns the kept set, a group id per kept record, and what was done."""
    report = DedupReport()
    seen_ids: set[str] = set()
    seen_text: dict[str, str] = {}
    keep: list[int] = []
    for i, (rid, text) in enumerate(zip(data.ids, data.texts, strict=True)):
        if rid in seen_ids:
            report.duplicate_ids.append(rid)
            continue
        digest = hashlib.sha256(" ".join(normalise(text)).encode()).hexdigest()
        if digest in seen_text:
            report.identical_texts.append((rid, seen_text[digest]))
            continue
        seen_ids.add(rid)
        seen_text[digest] = rid
        keep.append(i)
    kept = data.subset(keep)
    kept.layouts, kept.skipped = data.layouts, data.skipped
    groups = near_duplicate_groups(kept.texts, threshold=threshold)
    sizes = Counter(groups.tolist())
    multi = [g for g, c in sizes.items() if c > 1]
    report.near_duplicate_groups = len(multi)
    report.near_duplicate_members = sum(sizes[g] for g in multi)
    return kept, groups, report


# -- splitting ----------------------------------------------------------------------------------

def _date(record: dict[str, Any]) -> datetime | None:
    raw = record.get("published_date")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is None else parsed.astimezone(UTC).replace(tzinfo=None)


def _allocate(sizes: Sequence[int], fractions: Sequence[float]) -> list[int]:
    """Assign ordered groups (of given sizes) to splits so cumulative counts follow the fractions."""
    total = sum(sizes)
    bounds = np.cumsum(fractions) * total
    out: list[int] = []
    filled = 0
    for size in sizes:
        # A group goes where its middle falls, so groups straddling a boundary split the difference.
        middle = filled + size / 2.0
        out.append(min(int(np.searchsorted(bounds, middle, side="right")), len(fractions) - 1))
        filled += size
    return out


def split(data: LabelledSet, groups: np.ndarray, config: FilterConfig, *,
          fractions: Sequence[float] = DEFAULT_FRACTIONS, by_time: bool = False,
          seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices per split. Stratified by the oracle tier of each near-duplicate group (its
    highest member), groups never cut; ``by_time`` orders each stratum oldest-first so validation,
    calibration and test are progressively newer than training."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0,
                                                                                          abs_tol=1e-6):
        raise TrainingDataError(f"split fractions must be {len(SPLITS)} non-negative numbers summing to 1, "
                                f"got {list(fractions)}", step="prepare")
    tiers = data.tiers(config)
    rank = {Tier.LOW: 0, Tier.MEDIUM: 1, Tier.HIGH: 2}
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    strata: dict[int, list[int]] = {}
    for g, rows in members.items():
        strata.setdefault(max(rank[tiers[i]] for i in rows), []).append(g)
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(data), dtype=np.int64)
    for stratum in sorted(strata):
        group_ids = sorted(strata[stratum])
        if by_time:
            def when(g: int) -> tuple[int, datetime]:
                dates = [d for d in (_date(data.records[i]) for i in members[g]) if d is not None]
                return (0, min(dates)) if dates else (1, datetime.max)
            group_ids.sort(key=when)
        else:
            group_ids = [group_ids[i] for i in rng.permutation(len(group_ids))]
        for g, target in zip(group_ids, _allocate([len(members[g]) for g in group_ids], fractions), strict=True):
            assignment[members[g]] = target
    return {name: np.flatnonzero(assignment == k) for k, name in enumerate(SPLITS)}


# -- on disk ------------------------------------------------------------------------------------

def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class Prepared:
    """The result of ``prepare``: split sets and the manifest describing them."""

    splits: dict[str, LabelledSet]
    manifest: dict[str, Any]


def _skip_summary(source: Path, data: LabelledSet) -> str:
    """Why records were skipped, in words: the dimensions the labels lack first (with how many records
    lack each, and what the data carries instead), then the other reasons."""
    parts = []
    if data.missing:
        lacking = ", ".join(f"{d} ({n} records)" for d, n in data.missing.most_common())
        parts.append(f"the labels lack the package's dimensions {lacking}")
        try:
            carried, _ = infer_dimensions(Path(source))
        except (TrainingDataError, OSError):
            carried = []
        if carried:
            parts.append(f"the data carries {', '.join(carried)}")
    other = Counter(reason for _, reason in data.skipped if "missing or non-numeric" not in reason)
    if other:
        parts.append("; ".join(f"{n} × {reason}" for reason, n in other.most_common(3)))
    return "; ".join(parts) or "no records"


def prepare(source: Path, config: FilterConfig, *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
            by_time: bool = False, seed: int = 0, near_duplicate_threshold: float = 0.7,
            min_records: int = 20) -> Prepared:
    """Load, de-duplicate and split one labelled file for one filter config."""
    data = load_labelled(source, config.dimension_names, filter_name=config.name)
    if len(data) < min_records:
        raise TrainingDataError(
            f"{source}: only {len(data)} usable labelled records for {config.name} (need {min_records}); "
            f"{len(data.skipped)} skipped: {_skip_summary(source, data)}", filter=config.name, step="prepare")
    kept, groups, report = deduplicate(data, threshold=near_duplicate_threshold)
    rows = split(kept, groups, config, fractions=fractions, by_time=by_time, seed=seed)
    splits = {name: kept.subset(idx) for name, idx in rows.items()}
    sizes = Counter(groups.tolist())
    twins = {kept.ids[i]: kept.ids[int(g)] for i, g in enumerate(groups.tolist()) if sizes[g] > 1}
    manifest = {
        "filter": config.name, "version": config.version, "dimensions": config.dimension_names,
        "source": str(source), "source_sha256": _file_digest(Path(source)), "seed": seed, "by_time": by_time,
        "fractions": dict(zip(SPLITS, fractions, strict=True)), "layouts": dict(data.layouts),
        "read": len(data) + len(data.skipped), "usable": len(data), "kept": len(kept),
        "skipped": [{"id": i, "reason": r} for i, r in data.skipped],
        "dedup": report.to_dict(),
        "splits": {name: {"count": len(s), "tiers": dict(Counter(t.value for t in s.tiers(config))),
                          "ids_sha256": hashlib.sha256("\n".join(s.ids).encode()).hexdigest()[:16]}
                   for name, s in splits.items()},
        # Article id -> id of its near-duplicate group's first member, for every grouped article.
        "near_duplicates": twins,
    }
    return Prepared(splits=splits, manifest=manifest)


def write_prepared(prepared: Prepared, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, data in prepared.splits.items():
        path = out_dir / f"{name}.jsonl"
        with path.open("wb") as fh:
            for record in data.records:
                fh.write(orjson.dumps(record))
                fh.write(b"\n")
        paths[name] = path
    (out_dir / MANIFEST).write_bytes(orjson.dumps(prepared.manifest, option=orjson.OPT_INDENT_2))
    return paths


def load_split(split_dir: Path, name: str, config: FilterConfig) -> LabelledSet:
    """One split written by :func:`write_prepared`, read back for ``config``'s dimensions."""
    if name not in SPLITS:
        raise TrainingDataError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}", step="load")
    path = Path(split_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise TrainingDataError(f"{path} does not exist; run `fluxscore train prepare` first",
                                filter=config.name, step="load")
    manifest_path = Path(split_dir) / MANIFEST
    if manifest_path.is_file():
        manifest = orjson.loads(manifest_path.read_bytes())
        if manifest.get("dimensions") and manifest["dimensions"] != config.dimension_names:
            raise TrainingDataError(f"{split_dir} was prepared for dimensions {manifest['dimensions']}, "
                                    f"the filter has {config.dimension_names}", filter=config.name, step="load")
    return load_labelled(path, config.dimension_names, filter_name=config.name)


# -- several labelled sources into one (exported labels beside existing data) -----------------------

_SOURCE_RANK = {"human": 2, "oracle": 1}


def label_source(record: dict[str, Any]) -> str:
    """Who labelled a record: ``human`` or ``oracle`` (records without a source are oracle-labelled data)."""
    oracle = record.get("oracle")
    source = oracle.get("source") if isinstance(oracle, dict) else None
    return source if source in _SOURCE_RANK else "oracle"


def merge_labelled(sources: Sequence[Path], out: Path) -> dict[str, int]:
    """Write the records of every source into ``out``, one per article id; returns the count per source.

    A human label wins over an oracle label for the same article, whichever file it came from; between
    equals the earlier source wins (pass existing data first, new labels after, to keep the old ones).
    Lines without a usable id are kept as they are, so the prepare step reports them as it always does.
    """
    chosen: dict[str, dict[str, Any]] = {}
    anonymous: list[dict[str, Any]] = []
    for source in sources:
        if not Path(source).is_file():
            raise TrainingDataError(f"labelled data file {source} does not exist", step="load")
        for _, record, _error in read_jsonl(Path(source)):
            if record is None:
                continue
            rid = record.get("id")
            if not isinstance(rid, str) or not rid.strip():
                anonymous.append(record)
                continue
            known = chosen.get(rid)
            if known is None or _SOURCE_RANK[label_source(record)] > _SOURCE_RANK[label_source(known)]:
                chosen[rid] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        for record in [*chosen.values(), *anonymous]:
            fh.write(orjson.dumps(record) + b"\n")
    return dict(Counter(label_source(r) for r in chosen.values()))
