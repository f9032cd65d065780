"""Complete filter packages: a starting config for any labelled data, validation, and export.

Export refuses a package that would fail at load time in the scorer: every file the config names must be
present *and* readable as what it is (probe weights that match their metadata and the config's
dimensions, an adapter with its config and weights, a calibration file whose maps name known
dimensions, a non-empty oracle prompt). The exported directory is ``<dest>/<name>/<version>/``, the
layout the scorer resolves ``name@version`` in, and the package hash is printed and written beside it.

``export.json`` (the manifest) also records the sha256 of every file the package hash covers
(``file_sha256``); serving refuses a package whose files no longer match it, or that has none.

Given reference articles (the calibration split, ``<work>/splits/calibration.jsonl``), export also writes
the package's drift reference profile (:mod:`scoring.drift`): the articles scored by the package exactly as
serving scores them, one monitor row per article, and a sample of their stage-1 embeddings. The profile is
named in filter.yaml (``drift.reference``), so it is hashed with the package: a record's package hash
names the reference its drift reports were computed against.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from scoring.article import Article, parse_article
from scoring.calibration import Calibration
from scoring.drift import (
    PROFILE_EMBEDDINGS,
    PROFILE_NAME,
    PROFILE_ROWS,
    EmbeddingSample,
    ReferenceProfile,
    build_profile,
)
from scoring.exceptions import FluxscoreError, PackageError
from scoring.package import (
    CONFIG_NAME,
    MANIFEST_HASHES,
    MANIFEST_NAME,
    FilterConfig,
    FilterPackage,
    file_sha256,
    hash_files,
    hash_paths,
    load_config,
    load_package,
)
from training.exceptions import TrainingError

if TYPE_CHECKING:
    from scoring.pipeline import Pipeline
    from scoring.settings import ScoringSettings

EXPORT_INFO = MANIFEST_NAME
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class IncompletePackageError(TrainingError):
    """A package misses files, or holds files that do not load; ``problems`` lists each one."""

    def __init__(self, message: str, *, problems: list[str], filter: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, filter=filter, step="export", path=path)
        self.problems = problems


class StudentRoutingError(TrainingError):
    """A package would send articles to a student that did not beat the probe on the calibration split."""


def scaffold_config(name: str, dimensions: list[str], *, version: str = "1.0.0", description: str = "",
                    weights: list[float] | None = None, embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2",
                    head_tokens: int = 128, tail_tokens: int = 64, student_base: str | None = None,
                    student_max_length: int = 256, medium: float = 4.0, high: float = 7.0,
                    text_prefix: str | None = None, normalization: str | None = None) -> dict[str, Any]:
    """A filter.yaml body for data that comes without a package: equal weights unless given, no
    gatekeepers, no prefilter rules; the threshold starts at the MEDIUM boundary until fitted. The text
    prefix defaults to the one the encoder was trained with (``passage: `` for e5 models)."""
    from scoring.embedding import default_text_prefix

    if weights is None:
        # Equal weights that sum to exactly 1 after rounding, so the schema accepts them.
        base = round(1.0 / len(dimensions), 6)
        weights = [base] * (len(dimensions) - 1) + [round(1.0 - base * (len(dimensions) - 1), 6)]
    body: dict[str, Any] = {
        "name": name, "version": version,
        "description": description or f"Generated for {len(dimensions)} dimensions found in the labelled data.",
        "dimensions": [{"name": d, "weight": w, "description": f"Oracle dimension {d!r} (0-10)."}
                       for d, w in zip(dimensions, weights, strict=True)],
        "gatekeepers": [], "tiers": {"high": high, "medium": medium},
        "prefilter": {"block_commerce": True},
        "preprocessing": {"head_tokens": head_tokens, "tail_tokens": tail_tokens},
        "stage1": {"embedding_model": embedding_model, "probe": "probe.safetensors", "probe_meta": "probe.json",
                   "threshold": medium},
        "calibration": "calibration.json", "oracle_prompt": "prompt.md",
    }
    prefix = default_text_prefix(embedding_model) if text_prefix is None else text_prefix
    if prefix:
        body["stage1"]["text_prefix"] = prefix
    if normalization:
        body["normalization"] = normalization
    if student_base:
        body["stage2"] = {"base_model": student_base, "adapter": "adapter", "max_length": student_max_length}
    FilterConfig.model_validate(body)
    return body


def write_scaffold(package_dir: Path, body: dict[str, Any], prompt: str) -> FilterPackage:
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / CONFIG_NAME).write_text(
        "# Generated by `fluxscore train build`; edit weights, descriptions and gatekeepers to taste.\n"
        + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8")
    (package_dir / body["oracle_prompt"]).write_text(prompt, encoding="utf-8")
    return load_package(package_dir)


def default_prompt(config: dict[str, Any]) -> str:
    lines = [f"# {config['name']} oracle prompt", "",
             "Score the article below on each dimension from 0 (absent) to 10 (exceptional).", "",
             "Dimensions:", ""]
    lines += [f"- **{d['name']}**: {d['description']}" for d in config["dimensions"]]
    lines += ["", "Answer with one JSON object mapping each dimension name to "
              '{"score": <0-10>, "evidence": "<short quote>"}.', ""]
    return "\n".join(lines)


def problems(package: FilterPackage, *, to_be_written: frozenset[str] = frozenset()) -> list[str]:
    """Everything that keeps ``package`` from loading and scoring; empty when complete.

    ``to_be_written``: files the caller is about to write (the drift profile an export computes), which
    may be missing now."""
    from scoring.probe import Probe

    cfg: FilterConfig = package.config
    found: list[str] = [f"missing {rel}" for rel in package.missing_files() if rel not in to_be_written]
    prompt = package.file(cfg.oracle_prompt)
    if prompt.is_file() and not prompt.read_text(encoding="utf-8").strip():
        found.append(f"{cfg.oracle_prompt} is empty")
    weights, meta = package.file(cfg.stage1.probe), package.file(cfg.stage1.probe_meta)
    if weights.is_file() and meta.is_file():
        try:
            probe = Probe.load(weights, meta)
            if probe.dimensions != cfg.dimension_names:
                found.append(f"probe predicts {probe.dimensions}, config has {cfg.dimension_names}")
        except FluxscoreError as exc:
            found.append(f"probe does not load: {exc}")
    if cfg.stage2 is not None:
        adapter = package.file(cfg.stage2.adapter)
        if adapter.exists():
            for name in ADAPTER_FILES:
                if not (adapter / name).is_file():
                    found.append(f"adapter {cfg.stage2.adapter}/ lacks {name}")
    if cfg.calibration and package.file(cfg.calibration).is_file():
        try:
            calibration = Calibration.load(package.file(cfg.calibration))
            unknown = {d for maps in calibration.maps.values() for d in maps} - set(cfg.dimension_names)
            if unknown:
                found.append(f"calibration maps unknown dimensions {sorted(unknown)}")
        except FluxscoreError as exc:
            found.append(f"calibration does not load: {exc}")
    if cfg.normalization and package.file(cfg.normalization).is_file():
        from scoring.aggregate import PercentileNormalizer

        try:
            PercentileNormalizer.load(package.file(cfg.normalization))
        except FluxscoreError as exc:
            found.append(f"normalization does not load: {exc}")
    if cfg.drift.reference and package.file(cfg.drift.reference).is_file():
        try:
            profile = ReferenceProfile.load(package.file(cfg.drift.reference))
            if profile.filter != cfg.name:
                found.append(f"drift reference {cfg.drift.reference} is the profile of {profile.filter!r}")
        except FluxscoreError as exc:
            found.append(f"drift reference does not load: {exc}")
    return found


def require_complete(package: FilterPackage, *, to_be_written: frozenset[str] = frozenset()) -> None:
    found = problems(package, to_be_written=to_be_written)
    if found:
        raise IncompletePackageError(
            f"filter package {package.ref} at {package.path} is incomplete: " + "; ".join(found),
            problems=found, filter=package.ref, path=str(package.path))


def routing_problem(package: FilterPackage, *, keep_student_routing: bool = False) -> str | None:
    """Why the package's routing to its student is not what the student earned, or None.

    The record is the one ``train threshold``/``train build`` wrote into calibration.json (``routing``) when
    they compared student and probe; a package without one (never compared) passes."""
    cfg = package.config
    if not package.has_stage2 or not cfg.calibration or not package.file(cfg.calibration).is_file():
        return None
    try:
        routing = Calibration.load(package.file(cfg.calibration)).meta.get("routing")
    except FluxscoreError:
        return None  # problems() reports an unreadable calibration file
    if not isinstance(routing, dict):
        return None
    if routing.get("adapter") != package.model_hashes.get("adapter"):
        return ("the student was retrained after it was compared with the probe; run `fluxscore train calibrate` "
                "and `fluxscore train threshold` again")
    threshold = cfg.stage1.threshold
    earned = float(routing.get("threshold", 0.0))
    reason = str(routing.get("reason", ""))
    if routing.get("decision") == "kept" and not keep_student_routing:
        return (f"stage1.threshold {threshold:g} routes articles to a student that is not better than the probe "
                f"({reason})")
    if routing.get("decision") != "kept" and threshold < earned - 1e-9:
        return (f"stage1.threshold {threshold:g} escalates more articles than the student earned (threshold "
                f"{earned:g}: {reason})")
    return None


@dataclass(frozen=True)
class Exported:
    package: FilterPackage
    package_hash: str
    model_hashes: dict[str, str]


def export_package(source: Path, dest_root: Path | None = None, *, overwrite: bool = False,
                   reference: Path | Sequence[Article] | None = None,
                   settings: ScoringSettings | None = None, keep_student_routing: bool = False) -> Exported:
    """Validate the package at ``source`` and, with ``dest_root``, copy it to
    ``dest_root/<name>/<version>/``; returns the exported package and its hash.

    With ``reference`` (articles, or a JSONL file of them such as the calibration split), the drift
    reference profile is computed and written into the exported package before its manifest.

    A package whose threshold routes articles to a student its routing record found worse than the probe
    is refused (:class:`StudentRoutingError`) unless ``keep_student_routing``."""
    package = load_package(source)
    # The profile this export computes may not exist yet (a package built from a template naming it).
    pending = frozenset({package.config.drift.reference}) if reference is not None and package.config.drift.reference \
        else frozenset()
    require_complete(package, to_be_written=pending)
    problem = routing_problem(package, keep_student_routing=keep_student_routing)
    if problem is not None:
        raise StudentRoutingError(f"refusing to export {package.ref}: {problem}; pass --keep-student-routing to "
                                  "export it anyway", filter=package.ref, step="export", path=str(package.path))
    if dest_root is not None:
        target = Path(dest_root) / package.name / package.version
        if target.resolve() != package.path.resolve():
            if target.exists():
                if not overwrite:
                    raise PackageError(f"{target} already exists; pass overwrite to replace it",
                                       filter=package.ref, path=str(target))
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for rel in [CONFIG_NAME, *package.config.named_files().values()]:
                if rel in pending and not package.file(rel).exists():
                    continue
                src = package.file(rel)
                dst = target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dst)
                else:
                    shutil.copy2(src, dst)
            package = load_package(target)
            require_complete(package, to_be_written=pending)
    if reference is not None:
        articles = read_reference_articles(reference) if isinstance(reference, Path) else list(reference)
        source_text = (f"{reference.name} ({len(articles)} articles)" if isinstance(reference, Path)
                       else f"{len(articles)} articles")
        profile = build_reference_profile(package, articles, source=source_text, settings=settings)
        write_reference_profile(package.path, profile)
        package = load_package(package.path)
        require_complete(package)
    info = write_manifest(package)
    return Exported(package=package, package_hash=info["package_hash"], model_hashes=info["model_hashes"])


def _write_info(root: Path, info: dict[str, Any]) -> dict[str, Any]:
    # Outside the hashed files on purpose: a record of what the hash covered, not part of it.
    (root / EXPORT_INFO).write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    return info


def write_manifest(package: FilterPackage | Path) -> dict[str, Any]:
    """Write ``export.json`` for the package as it is on disk now (hashes, files, per-file sha256) and
    return it. Export calls this; so can anything that has just built or edited a package on purpose."""
    # A fresh load: hashes cached by an earlier read would describe files that may have changed since.
    package = load_package(package.path if isinstance(package, FilterPackage) else Path(package))
    return _write_info(package.path, {
        "name": package.name, "version": package.version, "package_hash": package.package_hash,
        "model_hashes": package.model_hashes, "files": sorted([CONFIG_NAME, *package.config.named_files().values()]),
        MANIFEST_HASHES: package.file_sha256})


def write_commerce_manifest(detector_dir: Path) -> dict[str, Any]:
    """``export.json`` for a commerce detector package (after its classifier was fitted)."""
    from scoring.commerce import load_config, package_files

    detector_dir = Path(detector_dir).resolve()
    config = load_config(detector_dir)
    files = sorted(package_files(config).values())
    return _write_info(detector_dir, {
        "name": "commerce", "version": config.version, "package_hash": hash_paths(detector_dir, files)[:16],
        "files": files, MANIFEST_HASHES: file_sha256(hash_files(detector_dir, files))})


# -- drift reference profile -----------------------------------------------------------------------

def read_reference_articles(path: Path) -> list[Article]:
    """Articles of a JSONL file (labelled records too: their label fields are ignored)."""
    if not path.is_file():
        raise TrainingError(f"reference articles {path} do not exist (run `fluxscore train prepare` first?)",
                            step="export", path=str(path))
    articles = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            articles.append(parse_article(line))
        except FluxscoreError as exc:
            raise TrainingError(f"{path}:{number} is not an article: {exc}", step="export", path=str(path)) from None
    if not articles:
        raise TrainingError(f"{path} holds no articles", step="export", path=str(path))
    return articles


class _MemoryStore:
    """Embeddings computed once while scoring, read again for the profile's sample."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Any] = {}

    def get_many(self, keys: Sequence[bytes]) -> list[Any]:
        return [self.rows.get(k) for k in keys]

    def put_many(self, keys: Sequence[bytes], embeddings: Any) -> None:
        self.rows.update(zip(keys, embeddings, strict=True))


def _export_pipeline(package: FilterPackage, settings: ScoringSettings | None) -> Pipeline:
    """A pipeline serving only ``package``, as a worker would, but without the manifest check: the
    package is being exported, so it has no (current) manifest yet."""
    from scoring.embedding import load_embedder
    from scoring.pipeline import LoadedFilter, Pipeline
    from scoring.settings import ScoringSettings
    from scoring.student import StudentPool

    settings = settings or ScoringSettings.from_env()
    pipeline = Pipeline.load([], settings=settings)
    if package.config.drift.reference and not package.file(package.config.drift.reference).exists():
        # The profile being computed is not there yet, and scoring does not read it: open the package
        # without it (the records' package hash is not what the profile keeps).
        drift = package.config.drift.model_copy(update={"reference": None})
        package = FilterPackage(config=package.config.model_copy(update={"drift": drift}), path=package.path)
    pipeline.filters[package.name] = LoadedFilter.open(package, device=pipeline.device)
    if package.has_stage2:
        pipeline.students = StudentPool(device=pipeline.device, batch_size=pipeline.stage2_batch)
        pipeline.students.register(package)
    load_embedder(package.config.stage1.embedding_model, pipeline.device)
    pipeline.embedding_store = _MemoryStore()
    return pipeline


def _spread(n: int, keep: int) -> list[int]:
    """``keep`` indices evenly spread over ``range(n)`` (all of them when ``n <= keep``)."""
    if n <= keep:
        return list(range(n))
    step = n / keep
    return [int(i * step) for i in range(keep)]


def build_reference_profile(package: FilterPackage, articles: Sequence[Article], *, source: str,
                            settings: ScoringSettings | None = None, max_rows: int = PROFILE_ROWS,
                            max_embeddings: int = PROFILE_EMBEDDINGS) -> ReferenceProfile:
    """Score ``articles`` with ``package`` (commerce detector included, as serving does) and profile them."""
    from scoring.embedding import EmbeddingKey, embed, load_embedder

    chosen = [articles[i] for i in _spread(len(articles), max_rows)]
    pipeline = _export_pipeline(package, settings)
    records, screened = pipeline.screen(chosen)
    final, escalations = pipeline.probe(screened)
    records += final + pipeline.escalate(escalations)
    texts = [s.text for s in screened if package.name in s.open_filters]
    texts = [texts[i] for i in _spread(len(texts), max_embeddings)]
    sample = None
    if texts:
        key = EmbeddingKey.of(package.config)
        emb = embed(load_embedder(key.model, pipeline.device), key, texts, pipeline.stage1_batch,
                    pipeline.embedding_store)
        sample = EmbeddingSample.of(emb, model=key.model, prefix=key.prefix, head_tokens=key.head,
                                    tail_tokens=key.tail)
    order = {a.id: i for i, a in enumerate(chosen)}
    records.sort(key=lambda r: order.get(r.article_id, len(order)))
    return build_profile(package.name, package.version, records, source=source, articles=len(chosen),
                         embeddings=sample, max_rows=max_rows)


_NORMALIZATION_LINE = re.compile(r"^normalization:[ \t]*(?P<value>[^#\n]*?)[ \t]*(#.*)?$")


def name_normalization(package_dir: Path, rel: str = "normalization.json") -> FilterConfig:
    """Make the package's filter.yaml ask for percentile normalisation (``normalization: rel``), leaving
    every other line as it was; a package that already names a file keeps it. Returns the new config."""
    config_path = Path(package_dir) / CONFIG_NAME
    config = load_config(config_path)
    if config.normalization:
        return config
    text = config_path.read_text(encoding="utf-8")
    lines = text.split("\n")
    entry = f"normalization: {rel}  # percentile reference, fitted by `fluxscore train build --normalize`"
    at = next((i for i, line in enumerate(lines) if _NORMALIZATION_LINE.match(line)), None)
    if at is None:
        new_text = text.rstrip("\n") + "\n" + entry + "\n"
    else:  # `normalization: null` or empty
        lines[at] = entry
        new_text = "\n".join(lines)
    tmp = config_path.with_suffix(".yaml.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    try:
        config = load_config(tmp)
        if config.normalization != rel:
            raise PackageError(f"{config_path}: normalization did not round-trip", path=str(config_path))
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(config_path)
    return config


_DRIFT_LINE = re.compile(r"^drift:[ \t]*(#.*)?$")


def write_reference_profile(package_dir: Path, profile: ReferenceProfile) -> Path:
    """Write ``profile`` into the package and name it in filter.yaml (``drift.reference``), leaving every
    other line of filter.yaml as it was; returns the profile's path."""
    package_dir = Path(package_dir)
    config = load_config(package_dir)
    if profile.filter != config.name:
        raise PackageError(f"a drift profile of {profile.filter!r} cannot go into package {config.name!r}",
                           filter=config.name, path=str(package_dir))
    rel = config.drift.reference or PROFILE_NAME
    path = package_dir / rel
    path.write_bytes(profile.to_json())
    if config.drift.reference:
        return path
    config_path = package_dir / CONFIG_NAME
    text = config_path.read_text(encoding="utf-8")
    lines = text.split("\n")
    at = next((i for i, line in enumerate(lines) if _DRIFT_LINE.match(line)), None)
    entry = f"reference: {rel}  # written by `fluxscore train export`: what the drift monitor compares with"
    if at is None:
        new_text = text.rstrip("\n") + "\n\ndrift:\n  " + entry + "\n"
    else:
        following = next((line for line in lines[at + 1:] if line.strip() and not line.lstrip().startswith("#")), "")
        indent = following[:len(following) - len(following.lstrip())] if following[:1].isspace() else "  "
        lines.insert(at + 1, indent + entry)
        new_text = "\n".join(lines)
    tmp = config_path.with_suffix(".yaml.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    try:
        if load_config(tmp).drift.reference != rel:
            raise PackageError(f"{config_path}: drift.reference did not round-trip", path=str(config_path))
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(config_path)
    return path
