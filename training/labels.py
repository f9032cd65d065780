"""Labels that flow back into training: the queue item, the label record, and the durable label store.

Active learning queues candidates (:class:`QueueItem`) on ``active-learning.<filter>``; the oracle
worker and human annotators answer them with :class:`Label` records. Labels are kept in a real
database through SQLAlchemy — SQLite by default (a file path), PostgreSQL by URL — so a label is never
only in memory or only in Kafka: the oracle worker acknowledges a queue item only after its label is
stored here.

One row per (article, filter, source, annotator): storing the same label again (a redelivered queue
item) changes nothing, so the store is idempotent under at-least-once delivery. Human labels win over
oracle labels for the same article when training data is exported (:meth:`LabelStore.training_rows`).

>>> store = LabelStore("sqlite://")
>>> label = Label(article_id="a1", filter="demo", source="oracle", annotator="gpt-x",
...               scores={"impact": 7.0, "evidence": 6.5}, text="Title\\n\\nBody")
>>> store.add(label), store.add(label)
(True, False)
>>> [(r["id"], r["oracle"]["source"]) for r in store.training_rows("demo")]
[('a1', 'oracle')]
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from scoring.settings import FluxscoreSettings
from training.exceptions import TrainingError

if TYPE_CHECKING:
    from training.feedback import FeedbackEvent, StoredFeedback

Source = Literal["oracle", "human"]
DEFAULT_DB = Path("~/.local/share/fluxscore/labels.db")


class LabelsSettings(FluxscoreSettings):
    """Where labels are kept: shared by the oracle worker, the annotator service and `fluxscore labels`."""

    doc_title: ClassVar[str] = "labels (oracle worker, annotators, `fluxscore labels`)"

    labels_db: str = Field(str(DEFAULT_DB), description=(
        "the label database: a file path (SQLite) or a SQLAlchemy URL such as "
        "`postgresql+psycopg://user@host/db` (needs the `postgres` extra)"))


class LabelStoreError(TrainingError):
    """The label database cannot be opened or written."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Priority(_Model):
    """Why an item was queued, and how urgently: the parts are recorded so a person can see why."""

    score: float = Field(description="the combined priority; higher first")
    uncertainty: float = Field(0.0, ge=0.0, le=1.0, description="probe vs student disagreement, 0..1")
    boundary: float = Field(0.0, ge=0.0, le=1.0, description="closeness to the HIGH boundary, 0..1")
    novelty: float = Field(1.0, ge=0.0, le=1.0, description="1 - similarity to the nearest item already queued")


class QueueItem(_Model):
    """One candidate for labelling, as it travels on ``active-learning.<filter>``."""

    article_id: str
    filter: str
    version: str
    package_hash: str
    title: str = ""
    text: str = Field(description="the article text the models read (title + cleaned content)")
    url: str | None = None
    language: str | None = None
    weighted_average: float
    tier: str
    stage: str
    dimensions: dict[str, float] = Field(description="the model's calibrated score per dimension")
    priority: Priority
    record_key: str
    queued_at: datetime

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str) -> QueueItem:
        return cls.model_validate_json(data)


class Label(_Model):
    """One answer for (article, filter): from the oracle (an LLM) or from a person."""

    article_id: str = Field(min_length=1)
    filter: str = Field(min_length=1)
    source: Source
    annotator: str = Field(min_length=1, description="oracle model id, or the annotator's name")
    scores: dict[str, float]
    text: str = Field("", description="what was labelled (kept so training can use the label alone)")
    title: str = ""
    note: str | None = None
    reasoning: str | None = None
    prompt_hash: str | None = None
    tokens: int | None = Field(None, ge=0)
    cost: float | None = Field(None, ge=0.0)
    package_version: str | None = None
    labelled_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("scores")
    @classmethod
    def _in_range(cls, scores: dict[str, float]) -> dict[str, float]:
        if not scores:
            raise ValueError("a label needs at least one dimension score")
        for name, value in scores.items():
            if not 0.0 <= float(value) <= 10.0:
                raise ValueError(f"score of {name!r} must be within 0..10, got {value}")
        return {k: float(v) for k, v in scores.items()}

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


_META = MetaData()
LABELS = Table(
    "fluxscore_labels", _META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("article_id", String(512), nullable=False),
    Column("filter", String(128), nullable=False),
    Column("source", String(16), nullable=False),
    Column("annotator", String(256), nullable=False),
    Column("scores", JSON, nullable=False),
    Column("text", Text, nullable=False, default=""),
    Column("title", Text, nullable=False, default=""),
    Column("note", Text),
    Column("reasoning", Text),
    Column("prompt_hash", String(64)),
    Column("tokens", Integer),
    Column("cost", Float),
    Column("package_version", String(64)),
    Column("labelled_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("article_id", "filter", "source", "annotator", name="fluxscore_labels_one_per_annotator"),
)
FEEDBACK = Table(
    "fluxscore_feedback", _META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("filter", String(128), nullable=False),
    # The event id, or its topic/partition/offset: a redelivered message finds its row and is not stored twice.
    Column("event_key", String(512), nullable=False),
    Column("article_id", String(512), nullable=False),
    Column("event", String(64), nullable=False),
    Column("weight", Float, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("scores", JSON),
    Column("event_id", String(256)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("filter", "event_key", name="fluxscore_feedback_once"),
)
ANNOTATORS = Table(
    "fluxscore_annotators", _META,
    Column("name", String(128), primary_key=True),
    # sha256 of the token: a stolen database does not hand out sign-ins.
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL for a file path (SQLite) or a URL as given (``postgresql+psycopg://…``)."""
    text = str(target)
    if "://" in text:
        return text
    path = Path(text).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _aware(moment: datetime) -> datetime:
    """SQLite keeps no time zone: the times it hands back were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LabelStore:
    """The durable label store (and the annotators' hashed tokens)."""

    def __init__(self, target: str | Path, *, engine: Engine | None = None) -> None:
        self.url = database_url(target)
        try:
            self.engine = engine or create_engine(self.url, future=True, pool_pre_ping=True)
            _META.create_all(self.engine)
        except OperationalError as exc:
            raise LabelStoreError(f"cannot open the label database {self._safe_url()}: {exc.orig}") from None

    def _safe_url(self) -> str:
        # Never print a database password.
        return self.engine.url.render_as_string(hide_password=True) if hasattr(self, "engine") else \
            self.url.split("@")[-1]

    # -- labels ------------------------------------------------------------------------------------

    def add(self, label: Label) -> bool:
        """Store ``label``; False when the same (article, filter, source, annotator) is stored already."""
        row = label.model_dump()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(LABELS).values(**row))
        except IntegrityError:
            return False
        return True

    def labels(self, filter_name: str | None = None, *, source: Source | None = None,
               since: datetime | None = None) -> list[Label]:
        """Stored labels, oldest first; ``since`` keeps those labelled at or after that (aware) time."""
        query = select(LABELS)
        if filter_name is not None:
            query = query.where(LABELS.c.filter == filter_name)
        if source is not None:
            query = query.where(LABELS.c.source == source)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(LABELS.c.id)).mappings().all()
        labels = [Label.model_validate({k: v for k, v in row.items() if k != "id"}) for row in rows]
        if since is None:
            return labels
        # Compared in Python: SQLite hands times back without their zone (they were stored in UTC).
        return [lb for lb in labels if _aware(lb.labelled_at) >= _aware(since)]

    def labelled_ids(self, filter_name: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(LABELS.c.article_id).where(LABELS.c.filter == filter_name)).scalars())

    def count(self, filter_name: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {"oracle": 0, "human": 0}
        for label in self.labels(filter_name):
            counts[label.source] += 1
        return counts

    def training_rows(self, filter_name: str) -> list[dict[str, Any]]:
        """One row per article in the layout ``fluxscore train build`` reads (``oracle.scores``).

        A human label wins over the oracle's for the same article; several human labels (overlap) are
        averaged per dimension. The label's source and who gave it are kept beside the scores.
        """
        by_article: dict[str, list[Label]] = {}
        for label in self.labels(filter_name):
            by_article.setdefault(label.article_id, []).append(label)
        rows = []
        for article_id, labels in by_article.items():
            human = [lb for lb in labels if lb.source == "human"]
            chosen = human or [lb for lb in labels if lb.source == "oracle"]
            dims = sorted({d for lb in chosen for d in lb.scores})
            scores = {d: round(sum(lb.scores[d] for lb in chosen if d in lb.scores)
                               / sum(1 for lb in chosen if d in lb.scores), 4) for d in dims}
            first = chosen[0]
            rows.append({"id": article_id, "title": first.title, "content": first.text,
                         "oracle": {"scores": scores, "source": first.source,
                                    "annotators": sorted({lb.annotator for lb in chosen}),
                                    "labelled_at": max(lb.labelled_at for lb in chosen).isoformat()}})
        return rows

    # -- feedback events ([evolve]: engagement and corrections from downstream consumers) ----------

    def add_feedback(self, filter_name: str, events: Sequence[tuple[FeedbackEvent, str]]) -> int:
        """Store ``(event, key)`` pairs for ``filter_name`` (keys from :func:`training.feedback.event_key`);
        returns how many were new. A key stored before (a redelivery) is skipped, so storing is idempotent."""
        if not events:
            return 0
        keys = [key for _, key in events]
        with self.engine.begin() as conn:
            known = set(conn.execute(select(FEEDBACK.c.event_key).where(
                FEEDBACK.c.filter == filter_name, FEEDBACK.c.event_key.in_(keys))).scalars())
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for event, key in events:
            if key in known:
                continue
            known.add(key)  # the same key twice in one batch is one event too
            rows.append({"filter": filter_name, "event_key": key, "article_id": event.article_id,
                         "event": event.event, "weight": event.weight, "at": event.at.astimezone(UTC),
                         "scores": event.scores,
                         "event_id": event.id, "received_at": now})
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(FEEDBACK), rows)
            return len(rows)
        except IntegrityError:
            pass  # another worker stored some of them since the look-up: one at a time, skipping those
        added = 0
        for row in rows:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(FEEDBACK).values(**row))
            except IntegrityError:
                continue
            added += 1
        return added

    def feedback(self, filter_name: str, *, since: datetime | None = None) -> list[StoredFeedback]:
        """Stored events of one filter, oldest first; ``since`` keeps those that happened at or after it."""
        from training.feedback import FeedbackEvent, StoredFeedback

        with self.engine.connect() as conn:
            rows = conn.execute(select(FEEDBACK).where(FEEDBACK.c.filter == filter_name)
                                .order_by(FEEDBACK.c.at, FEEDBACK.c.id)).mappings().all()
        out = []
        for row in rows:
            event = FeedbackEvent(article_id=row["article_id"], event=row["event"], weight=row["weight"],
                                  at=_aware(row["at"]), scores=row["scores"], id=row["event_id"])
            if since is not None and event.at < _aware(since):
                continue
            out.append(StoredFeedback(filter=filter_name, event=event, key=row["event_key"],
                                      received_at=_aware(row["received_at"])))
        return out

    # -- annotators --------------------------------------------------------------------------------

    def add_annotator(self, name: str) -> str:
        """Create (or replace) an annotator's token; returns the token, which is shown once."""
        token = secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            conn.execute(ANNOTATORS.delete().where(ANNOTATORS.c.name == name))
            conn.execute(insert(ANNOTATORS).values(name=name, token_sha256=_token_hash(token),
                                                   created_at=datetime.now(UTC)))
        return token

    def annotator_for(self, token: str) -> str | None:
        """The annotator a token signs in, or None (compared in constant time, hashed at rest)."""
        digest = _token_hash(token)
        with self.engine.connect() as conn:
            rows = conn.execute(select(ANNOTATORS.c.name, ANNOTATORS.c.token_sha256)).all()
        for name, stored in rows:
            if hmac.compare_digest(stored, digest):
                return str(name)
        return None

    def annotators(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(ANNOTATORS.c.name)).scalars())

    def close(self) -> None:
        self.engine.dispose()


# -- export formats ----------------------------------------------------------------------------------

def export_jsonl(store: LabelStore, filter_name: str) -> Iterator[bytes]:
    """The training layout (``oracle.scores``), one JSON object per line."""
    for row in store.training_rows(filter_name):
        yield orjson.dumps(row) + b"\n"


def export_label_studio(store: LabelStore, filter_name: str, dimensions: Sequence[str]) -> list[dict[str, Any]]:
    """Label Studio tasks: the article as data, each stored label as a prediction (a number per dimension)."""
    tasks = []
    by_article: dict[str, list[Label]] = {}
    for label in store.labels(filter_name):
        by_article.setdefault(label.article_id, []).append(label)
    for article_id, labels in by_article.items():
        predictions = [{
            "model_version": f"{lb.source}:{lb.annotator}",
            "result": [{"from_name": dim, "to_name": "text", "type": "number", "value": {"number": lb.scores[dim]}}
                       for dim in dimensions if dim in lb.scores],
        } for lb in labels]
        tasks.append({"data": {"id": article_id, "title": labels[0].title, "text": labels[0].text},
                      "predictions": predictions})
    return tasks


def export_argilla(store: LabelStore, filter_name: str, dimensions: Sequence[str]) -> list[dict[str, Any]]:
    """Argilla 2.x records: fields (title, text), one rating question per dimension with suggestions."""
    records = []
    by_article: dict[str, list[Label]] = {}
    for label in store.labels(filter_name):
        by_article.setdefault(label.article_id, []).append(label)
    for article_id, labels in by_article.items():
        best = next((lb for lb in labels if lb.source == "human"), labels[0])
        records.append({
            "id": article_id,
            "fields": {"title": best.title, "text": best.text},
            "suggestions": [{"question_name": dim, "value": round(best.scores[dim]), "agent": best.annotator,
                             "type": "human" if best.source == "human" else "model"}
                            for dim in dimensions if dim in best.scores],
            "metadata": {"filter": filter_name, "source": best.source, "annotators": sorted({lb.annotator
                                                                                           for lb in labels})},
        })
    return records
