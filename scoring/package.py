"""Filter packages: the one schema that filter behaviour is written in, loading, and the package hash.

A package is a directory ``filters/<name>/<version>/`` holding ``filter.yaml`` and the files it names.
Everything a filter does at run time — weights, gatekeepers, tiers, prefilter rules, token budgets,
escalation threshold, model locations — comes from that file. The package hash covers the config and
every file it names, so any change to behaviour changes the hash carried by every output record.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scoring.exceptions import ModelFilesMissingError, PackageError, PackageNotFoundError

CONFIG_NAME = "filter.yaml"
BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "filters"

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


class Stage1(_Strict):
    embedding_model: str = Field(description="sentence-transformers model id or local path")
    probe: str = Field(description="probe weights (safetensors), relative to the package")
    probe_meta: str = Field(description="probe metadata (JSON), relative to the package")
    threshold: Score = Field(description="escalate to stage 2 iff the stage-1 weighted average >= this")
    text_prefix: str = Field("", description="prepended to every text before embedding, e.g. 'passage: ' "
                                             "for e5 encoders; training and serving both apply it")


class Stage2(_Strict):
    base_model: str = Field(description="transformers model id or local path of the shared base")
    adapter: str = Field(description="peft LoRA adapter directory, relative to the package")
    max_length: int = Field(512, ge=8)


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
        return files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        yield path


def hash_paths(root: Path, rel_paths: list[str]) -> str:
    """Content hash over files (directories expanded), independent of absolute location."""
    digest = hashlib.sha256()
    for rel in sorted(set(rel_paths)):
        for file in _walk(root / rel):
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(_sha256_file(file).encode())
            digest.update(b"\n")
    return digest.hexdigest()


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

    @cached_property
    def package_hash(self) -> str:
        """sha256 over filter.yaml and every file the config names (present ones)."""
        return hash_paths(self.path, [CONFIG_NAME, *self.config.named_files().values()])[:16]

    @cached_property
    def model_hashes(self) -> dict[str, str]:
        """Per model file hash (short), for provenance."""
        out: dict[str, str] = {}
        for role in ("probe", "adapter", "calibration", "normalization"):
            rel = self.config.named_files().get(role)
            if rel and (self.path / rel).exists():
                out[role] = hash_paths(self.path, [rel])[:16]
        out["embedding_model"] = self.config.stage1.embedding_model
        if self.config.stage2 is not None:
            out["base_model"] = self.config.stage2.base_model
        return out

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
    try:
        raw: Any = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PackageError(f"{config_file} is not valid YAML: {exc}", path=str(config_file)) from None
    if not isinstance(raw, dict):
        raise PackageError(f"{config_file} must hold a mapping", path=str(config_file))
    try:
        return FilterConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise PackageError(f"{config_file} is invalid: {problems}", filter=raw.get("name"),
                           path=str(config_file)) from None


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
    return FilterPackage(config=config, path=path)


def search_roots(extra: tuple[Path, ...] = ()) -> list[Path]:
    env = os.environ.get("FLUXSCORE_FILTERS_PATH", "")
    roots = [*extra, *(Path(p) for p in env.split(os.pathsep) if p), BUNDLED_ROOT]
    seen: list[Path] = []
    for root in roots:
        if root not in seen:
            seen.append(root)
    return seen


def _version_key(version: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def available(roots: list[Path] | None = None) -> dict[str, list[Path]]:
    """Filter name -> package directories (newest version last) found under the search roots."""
    found: dict[str, list[Path]] = {}
    for root in roots or search_roots():
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


def resolve(ref: str, roots: list[Path] | None = None) -> FilterPackage:
    """Resolve ``name``, ``name@version`` or a package directory to a loaded package."""
    candidate = Path(ref).expanduser()
    if candidate.exists() and (candidate.is_dir() or candidate.name == CONFIG_NAME):
        return load_package(candidate)
    name, _, version = ref.partition("@")
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


def resolve_many(refs: str | list[str], roots: list[Path] | None = None) -> list[FilterPackage]:
    items = [r.strip() for r in (refs.split(",") if isinstance(refs, str) else refs) if r.strip()]
    if not items:
        raise PackageNotFoundError("no filter named")
    packages = [resolve(r, roots) for r in items]
    names = [p.name for p in packages]
    if len(set(names)) != len(names):
        raise PackageError(f"a filter is named twice: {names}")
    return packages
