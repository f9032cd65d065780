"""The universal commerce detector: blocks product listings, deals, affiliate and sponsored content,
price comparisons and shopping guides, whatever filter is scoring.

Two steps, so the cheap one can run in the prefilter stage and the other reuse stage 1's embedding:

1. :meth:`CommerceDetector.evidence` counts rule hits (data in ``commerce.yaml``) and turns them into
   a rule score and one feature per rule group. Decisive rule evidence blocks at once
   (:meth:`CommerceDetector.early_verdict`).
2. :meth:`CommerceDetector.classify` applies a logistic regression over ``[embedding, rule features]``
   (weights in safetensors + JSON, trained by :mod:`training.commerce`): a dot product per article.

Without classifier files the detector runs rules-only, says so in :attr:`CommerceDetector.mode` and in
every verdict's reason, and logs it once at load.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors.numpy import load_file

from scoring.article import Article
from scoring.exceptions import ModelLoadError, PackageError, PackageNotFoundError, ScoringError
from scoring.package import BUNDLED_ROOT, check_paths, hash_paths, read_manifest, verify_package_files
from scoring.records import CommerceResult
from scoring.schema import load_yaml_model
from scoring.textmatch import KeywordSet, compile_regex, normalize_keyword

log = logging.getLogger(__name__)

CONFIG_NAME = "commerce.yaml"
DEFAULT_PATH = Path(BUNDLED_ROOT) / "commerce" / "v1"
CLASSIFIER_FORMAT = "fluxscore-commerce-classifier/1"
RULE_SCORE_FEATURE = "rule_score"

_DEFINE = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")
_LANGUAGE = re.compile(r"^(?:any|[a-z]{2,3})$")
_MAX_SAMPLES = 3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleGroup(_Strict):
    """Hits of these patterns and keywords are one kind of commerce evidence."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    weight: float = Field(gt=0.0, le=1.0, description="most this group adds to the rule score")
    scale: float = Field(gt=0.0, description="x at which the group reaches 63% of its weight")
    normalize: bool = Field(True, description="x = hits per 1000 characters (else the raw hit count)")
    target: Literal["text", "url"] = "text"
    case_sensitive: bool = False
    patterns: dict[str, list[str]] = Field(default_factory=dict, description="language -> regexes")
    keywords: dict[str, list[str]] = Field(default_factory=dict, description="language -> words/phrases")

    @field_validator("patterns", "keywords")
    @classmethod
    def _languages(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for lang in value:
            if not _LANGUAGE.match(lang):
                raise ValueError(f"language key {lang!r} must be 'any' or an ISO 639 code")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> RuleGroup:
        if not any(self.patterns.values()) and not any(self.keywords.values()):
            raise ValueError(f"rule group {self.name!r} has no patterns and no keywords")
        return self

    @property
    def languages(self) -> set[str]:
        return {k for k, v in self.patterns.items() if v} | {k for k, v in self.keywords.items() if v}


class CommerceConfig(_Strict):
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
    embedding_model: str
    # The cut the classifier was trained on. The pipeline reuses a filter's stage-1 embedding only when
    # that filter's cut is identical; otherwise it encodes once more rather than feed the classifier
    # embeddings of another text window.
    text_prefix: str = Field("", description="what the encoder expects before a text")
    head_tokens: int = Field(128, ge=1, description="tokens from the start of the text")
    tail_tokens: int = Field(64, ge=0, description="tokens from the end of the text")
    threshold: float = Field(gt=0.0, lt=1.0, description="classifier probability that blocks")
    rule_block_threshold: float = Field(gt=0.0, le=1.0, description="rule score that blocks on its own")
    rules_only_threshold: float = Field(gt=0.0, le=1.0, description="rule score that blocks without classifier")
    min_chars: int = Field(400, ge=1, description="shorter texts count as this long for hit densities")
    classifier: str = "classifier.safetensors"
    classifier_meta: str = "classifier.json"
    defines: dict[str, str] = Field(default_factory=dict)
    groups: list[RuleGroup] = Field(min_length=1)

    @field_validator("groups")
    @classmethod
    def _unique(cls, groups: list[RuleGroup]) -> list[RuleGroup]:
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"rule group names repeat: {names}")
        return groups

    @model_validator(mode="after")
    def _thresholds(self) -> CommerceConfig:
        if self.rules_only_threshold > self.rule_block_threshold:
            raise ValueError("rules_only_threshold must not exceed rule_block_threshold")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f"rule:{g.name}" for g in self.groups] + [RULE_SCORE_FEATURE]


class CommerceEvidence(BaseModel):
    """What the rules found in one article; travels on a Kafka topic between prefilter and probe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule_score: float = Field(ge=0.0, le=1.0)
    features: list[float]
    reasons: list[str] = Field(default_factory=list)


class ClassifierMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["fluxscore-commerce-classifier/1"]
    embedding_model: str
    embedding_dim: int = Field(ge=1)
    feature_names: list[str]
    normalize_embedding: bool = True


def expand_defines(pattern: str, defines: dict[str, str], *, where: str) -> str:
    """Replace ``{{NAME}}`` with its fragment from ``defines`` (fragments may use earlier ones)."""
    for _ in range(10):
        names = _DEFINE.findall(pattern)
        if not names:
            return pattern
        unknown = [n for n in names if n not in defines]
        if unknown:
            raise PackageError(f"{where}: pattern uses undefined fragment {{{{{unknown[0]}}}}}: {pattern!r}")
        pattern = _DEFINE.sub(lambda m: defines[m.group(1)], pattern)
    raise PackageError(f"{where}: fragments nest too deep (a define refers to itself?)")


class _CompiledGroup:
    """A group's regexes as one alternation: one scan of the text, overlapping patterns count a span once."""

    def __init__(self, group: RuleGroup, defines: dict[str, str]) -> None:
        self.group = group
        where = f"commerce rule group {group.name!r}"
        sources = []
        for lang, patterns in group.patterns.items():
            for pattern in patterns:
                source = expand_defines(pattern, defines, where=f"{where} ({lang})")
                compile_regex(source, case_sensitive=group.case_sensitive, where=f"{where} ({lang})")
                sources.append(f"(?:{source})")
        self.regex = (compile_regex("|".join(sources), case_sensitive=group.case_sensitive, where=where)
                      if sources else None)


class _Keywords:
    """Every group's keywords (per target and case mode) in one trie regex: one scan per text."""

    def __init__(self, groups: Sequence[RuleGroup]) -> None:
        self.sets: list[tuple[str, bool, KeywordSet, dict[str, list[int]]]] = []
        modes = sorted({(g.target, g.case_sensitive) for g in groups if any(g.keywords.values())})
        for target, case_sensitive in modes:
            owners: dict[str, list[int]] = {}
            written: dict[str, str] = {}
            for index, group in enumerate(groups):
                if group.target != target or group.case_sensitive != case_sensitive:
                    continue
                for keyword in (k for kws in group.keywords.values() for k in kws if k.strip()):
                    key = normalize_keyword(keyword, case_sensitive)
                    written.setdefault(key, keyword)
                    if index not in owners.setdefault(key, []):
                        owners[key].append(index)
            try:
                keyword_set = KeywordSet.build(written.values(), case_sensitive)
            except ValueError as exc:
                raise PackageError(f"invalid keyword in commerce rules: {exc}") from None
            self.sets.append((target, case_sensitive, keyword_set, owners))

    def find(self, texts: dict[str, str], found: list[list[str]]) -> None:
        for target, case_sensitive, keyword_set, owners in self.sets:
            text = texts[target]
            if not text:
                continue
            for keyword in keyword_set.find(keyword_set.prepare(text)):
                for index in owners.get(normalize_keyword(keyword, case_sensitive), ()):
                    found[index].append(keyword)


def _samples(found: list[str]) -> str:
    seen: list[str] = []
    for item in found:
        item = " ".join(item.split())[:30]
        if item not in seen:
            seen.append(item)
        if len(seen) == _MAX_SAMPLES:
            break
    return ",".join(seen)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return out


def load_config(path: Path) -> CommerceConfig:
    config_file = path / CONFIG_NAME if path.is_dir() else path
    if not config_file.is_file():
        raise PackageNotFoundError(f"no {CONFIG_NAME} in {path}", filter="commerce", path=str(path))
    config = load_yaml_model(config_file, CommerceConfig, filter="commerce")
    # The same rule as filter packages: the classifier files it names must lie inside the package.
    check_paths(config_file.parent, package_files(config), ref=f"commerce@{config.version}")
    return config


def package_files(config: CommerceConfig) -> dict[str, str]:
    """Field -> relative path of every file the commerce package hash (and its export manifest) covers."""
    return {CONFIG_NAME: CONFIG_NAME, "classifier": config.classifier, "classifier_meta": config.classifier_meta}


class CommerceDetector:
    """Rules + classifier; build with :meth:`load`. Methods are pure and thread-safe."""

    def __init__(self, config: CommerceConfig, path: Path, *, coef: np.ndarray | None = None,
                 intercept: float = 0.0, meta: ClassifierMeta | None = None,
                 missing: Sequence[str] = ()) -> None:
        self.config = config
        self.path = path
        self.embedding_model = config.embedding_model
        self.package_hash = hash_paths(path, list(package_files(config).values()))[:16]
        try:
            self._groups = [_CompiledGroup(g, config.defines) for g in config.groups]
            self._keywords = _Keywords(config.groups)
        except PackageError as exc:
            raise exc.with_context(filter="commerce", path=str(path)) from None
        self._coef = coef
        self._intercept = float(intercept)
        self.meta = meta
        self.missing = list(missing)
        self.mode: Literal["classifier", "rules_only"] = "classifier" if coef is not None else "rules_only"

    @classmethod
    def load(cls, path: Path | None = None, *, verify: bool = False,
             allow_unverified: bool = False) -> CommerceDetector:
        """Load ``commerce.yaml`` and, when present, the classifier from ``path`` (default: bundled).

        ``verify`` (what serving, :meth:`scoring.pipeline.Pipeline.load`, asks for) first checks the files
        against the sha256 hashes of the package's ``export.json``; ``allow_unverified`` is the development
        override that skips that check with a warning. A package with no classifier and no manifest runs
        rules-only unverified: there is no model file to vouch for.
        """
        path = Path(path if path is not None else DEFAULT_PATH).resolve()
        if path.is_file():
            path = path.parent
        config = load_config(path)
        weights_file, meta_file = path / config.classifier, path / config.classifier_meta
        missing = [f.name for f in (weights_file, meta_file) if not f.is_file()]
        ref = f"commerce@{config.version}"
        if verify and (not missing or read_manifest(path, ref=ref) is not None):
            verify_package_files(path, list(package_files(config).values()), ref=ref,
                                 allow_unverified=allow_unverified,
                                 export_hint="training.export.write_commerce_manifest (`fluxscore train demo` runs it)")
        if missing:
            log.warning("commerce detector at %s runs rules-only: missing %s", path, ", ".join(missing))
            return cls(config, path, missing=missing)
        meta = cls._read_meta(meta_file, config)
        try:
            tensors = load_file(str(weights_file))
            coef = np.asarray(tensors["coef"], dtype=np.float64).reshape(-1)
            intercept = float(np.asarray(tensors["intercept"]).reshape(-1)[0])
        except Exception as exc:  # safetensors raises several unrelated types for a bad file
            raise ModelLoadError(f"cannot read commerce classifier {weights_file}: {exc}",
                                 path=str(weights_file)) from None
        expected = meta.embedding_dim + len(meta.feature_names)
        if coef.shape[0] != expected or not np.all(np.isfinite(coef)) or not math.isfinite(intercept):
            raise ModelLoadError(f"commerce classifier {weights_file} has {coef.shape[0]} finite weights, "
                                 f"expected {expected} (embedding {meta.embedding_dim} + rule features)",
                                 path=str(weights_file))
        return cls(config, path, coef=coef, intercept=intercept, meta=meta)

    @staticmethod
    def _read_meta(meta_file: Path, config: CommerceConfig) -> ClassifierMeta:
        try:
            meta = ClassifierMeta.model_validate(json.loads(meta_file.read_text(encoding="utf-8")))
        except (ValueError, ValidationError) as exc:
            raise ModelLoadError(f"commerce classifier metadata {meta_file} is invalid: {exc}",
                                 path=str(meta_file)) from None
        if meta.embedding_model != config.embedding_model:
            raise PackageError(f"commerce classifier was trained on {meta.embedding_model!r} but "
                               f"{CONFIG_NAME} names {config.embedding_model!r}; retrain it",
                               filter="commerce", path=str(meta_file))
        if meta.feature_names != config.feature_names:
            raise PackageError("commerce classifier was trained with other rule groups "
                               f"({meta.feature_names}) than {CONFIG_NAME} has ({config.feature_names}); "
                               "retrain it", filter="commerce", path=str(meta_file))
        return meta

    @property
    def feature_names(self) -> list[str]:
        return self.config.feature_names

    def evidence(self, article: Article, text: str) -> CommerceEvidence:
        """Rule hits of one article; ``text`` is :func:`scoring.text.article_text` of it."""
        length = max(len(text), self.config.min_chars)
        texts = {"text": text, "url": article.url or ""}
        found: list[list[str]] = [
            [m.group(0) for m in c.regex.finditer(texts[c.group.target])] if c.regex is not None else []
            for c in self._groups]
        self._keywords.find(texts, found)
        survival = 1.0
        features: list[float] = []
        reasons: list[str] = []
        for compiled, hits in zip(self._groups, found, strict=True):
            group = compiled.group
            x = len(hits) * 1000.0 / length if group.normalize else float(len(hits))
            saturation = 1.0 - math.exp(-x / group.scale)
            features.append(saturation)
            survival *= 1.0 - group.weight * saturation
            if hits:
                reasons.append(f"{group.name}:{len(hits)}({_samples(hits)})")
        rule_score = min(1.0, max(0.0, 1.0 - survival))
        features.append(rule_score)
        return CommerceEvidence(rule_score=rule_score, features=features, reasons=reasons)

    def _summary(self, evidence: CommerceEvidence) -> str:
        return f" [{'; '.join(evidence.reasons)}]" if evidence.reasons else ""

    def early_verdict(self, evidence: CommerceEvidence) -> CommerceResult | None:
        """A block when the rules alone are decisive, else None (the classifier decides later)."""
        threshold = self.config.rule_block_threshold
        if evidence.rule_score >= threshold:
            return CommerceResult(blocked=True, score=evidence.rule_score,
                                  reason=f"commerce:rules:{evidence.rule_score:.2f}>={threshold:g}"
                                         + self._summary(evidence))
        return None

    def _rules_only(self, evidence: CommerceEvidence) -> CommerceResult:
        threshold = self.config.rules_only_threshold
        blocked = evidence.rule_score >= threshold
        sign = ">=" if blocked else "<"
        return CommerceResult(blocked=blocked, score=evidence.rule_score,
                              reason=f"commerce:rules_only(classifier missing: {', '.join(self.missing)}):"
                                     f"{evidence.rule_score:.2f}{sign}{threshold:g}" + self._summary(evidence))

    def classify(self, evidence: Sequence[CommerceEvidence], embeddings: np.ndarray) -> list[CommerceResult]:
        """Final verdicts; ``embeddings`` (n, dim) are stage 1's, one row per evidence, same order."""
        if len(evidence) == 0:
            return []
        early = [self.early_verdict(e) for e in evidence]
        if self._coef is None or self.meta is None:
            return [v if v is not None else self._rules_only(e) for v, e in zip(early, evidence, strict=True)]
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(evidence) or emb.shape[1] != self.meta.embedding_dim:
            raise ScoringError(f"commerce classifier needs embeddings of shape ({len(evidence)}, "
                               f"{self.meta.embedding_dim}), got {emb.shape}", filter="commerce",
                               stage="commerce")
        n_features = len(self.feature_names)
        bad = [i for i, e in enumerate(evidence) if len(e.features) != n_features]
        if bad:
            raise ScoringError(f"commerce evidence #{bad[0]} has {len(evidence[bad[0]].features)} features, "
                               f"expected {n_features}: it was computed with another commerce.yaml",
                               filter="commerce", stage="commerce")
        x = np.hstack([prepare_embeddings(emb, self.meta.normalize_embedding),
                       np.asarray([e.features for e in evidence], dtype=np.float64)])
        probs = _sigmoid(x @ self._coef + self._intercept)
        threshold = self.config.threshold
        results = []
        for verdict, ev, p in zip(early, evidence, probs.tolist(), strict=True):
            if verdict is not None:
                results.append(verdict)
                continue
            blocked = p >= threshold
            sign = ">=" if blocked else "<"
            results.append(CommerceResult(blocked=blocked, score=min(1.0, max(0.0, p)),
                                          reason=f"commerce:classifier:{p:.2f}{sign}{threshold:g}"
                                                 + self._summary(ev)))
        return results


def prepare_embeddings(embeddings: np.ndarray, normalize: bool) -> np.ndarray:
    """The embedding part of the classifier input, identical in training and serving."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if not normalize:
        return emb
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    out: np.ndarray = emb / np.where(norms > 0, norms, 1.0)
    return out
