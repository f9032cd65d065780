"""What drift monitoring compares, without the monitor: one row per score record, and the reference profile.

The drift monitor (``streams.monitor``), the offline report (``fluxscore drift report``) and export
(``training.export``, which writes a package's reference profile from its calibration data) all turn a
:class:`~scoring.records.ScoreRecord` into the same flat row (:func:`monitor_row`), so a reference
computed at export compares with live windows column for column.

A reference profile (``drift.reference`` in filter.yaml, hashed with the package) holds at most a few
hundred such rows and, when it could be computed, a sample of stage-1 embeddings. Embeddings are stored
as a fixed random projection (:func:`project`; 32 dimensions by default, float16, base64) rather than in
full: a Gaussian projection keeps distances between embeddings (Johnson–Lindenstrauss), which is what a
drift test of embeddings looks at, at a twelfth of the size of a 384-d MiniLM embedding. Its matrix comes
from NumPy's legacy ``RandomState`` generator, whose streams are frozen across NumPy versions, so the
monitor projects live embeddings exactly as export projected the reference.

>>> from scoring.records import FilterRef, PrefilterResult, ScoreRecord, StageUsed, InputStats
>>> from scoring.aggregate import Tier
>>> record = ScoreRecord(article_id="a1", filter=FilterRef(name="demo", version="1", package_hash="h"),
...                      model_hashes={}, stage=StageUsed.PREFILTER, weighted_average=0.0, tier=Tier.LOW,
...                      prefilter=PrefilterResult(passed=False, reason="too short"),
...                      input=InputStats(text_chars=120, language="nl"))
>>> monitor_row(record)
{'weighted_average': 0.0, 'tier': 'LOW', 'stage': 'prefilter', 'prefilter': 'blocked', 'text_chars': 120, \
'language': 'nl'}
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scoring.exceptions import PackageError
from scoring.records import ScoreRecord

PROFILE_FORMAT = 1
PROFILE_NAME = "drift_reference.json"
# Rows and embeddings a profile keeps: enough for the drift tests of a window of a few hundred records,
# small enough to ship inside a package.
PROFILE_ROWS = 500
PROFILE_EMBEDDINGS = 300
PROJECTION_DIMS = 32
PROJECTION_SEED = 20261122
SCORED_STAGES = ("stage1", "stage2")
UNKNOWN = "unknown"
NUMERIC_BASE = ("weighted_average", "text_chars")
CATEGORICAL = ("tier", "stage", "prefilter", "language")
Row = dict[str, Any]


def monitor_row(record: ScoreRecord) -> Row:
    """The columns drift monitoring watches for one record: weighted average, each calibrated dimension
    (``dim.<name>``, scored records only), tier, stage, the prefilter's verdict, text length and language."""
    row: Row = {"weighted_average": record.weighted_average, "tier": record.tier.value, "stage": record.stage.value,
                "prefilter": "passed" if record.prefilter.passed else "blocked"}
    for name, score in record.dimensions.items():
        row[f"dim.{name}"] = score.calibrated
    row["text_chars"] = record.input.text_chars if record.input is not None else None
    row["language"] = record.input.language if record.input is not None else UNKNOWN
    return row


def numeric_columns(rows: Iterable[Row]) -> list[str]:
    """Numeric columns present in ``rows``: weighted average, dimensions (sorted), text length."""
    dims = sorted({k for row in rows for k in row if k.startswith("dim.")})
    return ["weighted_average", *dims, "text_chars"]


def projection(source_dim: int, dims: int = PROJECTION_DIMS, seed: int = PROJECTION_SEED) -> np.ndarray:
    """The ``source_dim × dims`` Gaussian projection matrix (scaled so squared norms are kept on average)."""
    # RandomState, not default_rng: its stream is frozen, so export and every later monitor agree.
    return (np.random.RandomState(seed).standard_normal((source_dim, dims)) / np.sqrt(dims)).astype(np.float32)


def project(embeddings: np.ndarray, dims: int = PROJECTION_DIMS, seed: int = PROJECTION_SEED) -> np.ndarray:
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array, got shape {emb.shape}")
    return emb @ projection(emb.shape[1], dims, seed)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EmbeddingSample(_Model):
    """Projected stage-1 embeddings of sample articles, with what is needed to project live ones alike."""

    model: str = Field(description="the encoder (filter.yaml stage1.embedding_model)")
    prefix: str = ""
    head_tokens: int
    tail_tokens: int
    source_dim: int = Field(ge=1)
    dims: int = Field(PROJECTION_DIMS, ge=1)
    seed: int = PROJECTION_SEED
    rows: int = Field(ge=0)
    float16_base64: str = Field(description="rows × dims little-endian float16, base64")

    @classmethod
    def of(cls, embeddings: np.ndarray, *, model: str, prefix: str, head_tokens: int, tail_tokens: int,
           dims: int = PROJECTION_DIMS, seed: int = PROJECTION_SEED) -> EmbeddingSample:
        """From full (unprojected) embeddings."""
        emb = np.asarray(embeddings, dtype=np.float32)
        projected = project(emb, dims, seed).astype("<f2")
        return cls(model=model, prefix=prefix, head_tokens=head_tokens, tail_tokens=tail_tokens,
                   source_dim=emb.shape[1], dims=dims, seed=seed, rows=len(emb),
                   float16_base64=base64.b64encode(projected.tobytes()).decode("ascii"))

    def array(self) -> np.ndarray:
        """The projected embeddings, ``rows × dims`` float32."""
        raw = base64.b64decode(self.float16_base64)
        values = np.frombuffer(raw, dtype="<f2")
        if values.size != self.rows * self.dims:
            raise ValueError(f"embedding sample holds {values.size} values, expected {self.rows} × {self.dims}")
        return values.reshape(self.rows, self.dims).astype(np.float32)


class ReferenceProfile(_Model):
    """A filter's drift reference, written into its package at export."""

    format: Literal[1] = 1
    filter: str
    version: str
    source: str = Field(description="what the rows come from, for people (e.g. the calibration split)")
    articles: int = Field(ge=0, description="articles scored to build it")
    rows: list[Row]
    embeddings: EmbeddingSample | None = None

    def to_json(self) -> bytes:
        # Sorted keys and no times: exporting the same package twice writes the same bytes (and hash).
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        try:
            return cls.model_validate(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
            raise PackageError(f"drift reference profile {path} cannot be read: {exc}", path=str(path)) from None


def build_profile(filter_name: str, version: str, records: Sequence[ScoreRecord], *, source: str, articles: int,
                  embeddings: EmbeddingSample | None = None, max_rows: int = PROFILE_ROWS) -> ReferenceProfile:
    """A profile of ``records`` (one filter's), keeping an evenly spaced subset when there are more than
    ``max_rows``, so the kept rows still span the whole set rather than its first part."""
    rows = [monitor_row(r) for r in records]
    if len(rows) > max_rows:
        keep = np.linspace(0, len(rows) - 1, max_rows).round().astype(int)
        rows = [rows[i] for i in keep]
    return ReferenceProfile(filter=filter_name, version=version, source=source, articles=articles, rows=rows,
                            embeddings=embeddings)
