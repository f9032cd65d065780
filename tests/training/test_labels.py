"""The durable label store on a real database: SQLite by default, PostgreSQL when one answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from training.labels import Label, LabelStore, export_argilla, export_jsonl, export_label_studio

DIMS = ["impact", "evidence"]


def _label(article: str, source: str, who: str, impact: float) -> Label:
    return Label(article_id=article, filter="demo", source=source, annotator=who,  # type: ignore[arg-type]
                 scores={"impact": impact, "evidence": 5.0}, text=f"text of {article}", title=f"t {article}")


def _postgres_url() -> str | None:
    from sqlalchemy import create_engine, text

    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    try:
        with create_engine(url).connect() as conn:
            conn.execute(text("select 1"))
    except Exception:
        return None
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabelStore]:
    if request.param == "sqlite":
        yield LabelStore(tmp_path / "labels.db")
        return
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    from sqlalchemy import create_engine

    # A schema of its own per test: tests never see each other's rows.
    schema = f"t{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, execution_options={"schema_translate_map": {None: schema}})
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield LabelStore(url, engine=engine)
    _drop(url, schema)


def _drop(url: str, schema: str) -> None:
    from sqlalchemy import create_engine

    with create_engine(url).begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def test_labels_survive_a_new_store_and_are_idempotent(store: LabelStore) -> None:
    assert store.add(_label("a1", "oracle", "m", 7.0))
    assert not store.add(_label("a1", "oracle", "m", 7.0)), "a redelivered label is stored once"
    assert store.add(_label("a1", "human", "ann", 3.0))
    again = LabelStore(store.url, engine=store.engine)
    assert [lb.source for lb in again.labels("demo")] == ["oracle", "human"]
    assert again.count("demo") == {"oracle": 1, "human": 1}


def test_human_labels_win_and_overlap_is_averaged(store: LabelStore) -> None:
    store.add(_label("a1", "oracle", "m", 9.0))
    store.add(_label("a1", "human", "ann", 3.0))
    store.add(_label("a1", "human", "bob", 5.0))
    store.add(_label("a2", "oracle", "m", 6.0))
    rows = {r["id"]: r for r in store.training_rows("demo")}
    assert rows["a1"]["oracle"]["scores"]["impact"] == 4.0
    assert rows["a1"]["oracle"]["source"] == "human" and rows["a1"]["oracle"]["annotators"] == ["ann", "bob"]
    assert rows["a2"]["oracle"]["source"] == "oracle"
    lines = [orjson.loads(line) for line in export_jsonl(store, "demo")]
    assert {r["id"] for r in lines} == {"a1", "a2"}


def test_annotator_tokens_are_hashed_at_rest(store: LabelStore) -> None:
    token = store.add_annotator("ann")
    assert store.annotator_for(token) == "ann"
    assert store.annotator_for(token + "x") is None
    from sqlalchemy import select

    from training.labels import ANNOTATORS

    with store.engine.connect() as conn:
        stored = conn.execute(select(ANNOTATORS.c.token_sha256)).scalar_one()
    assert token not in stored


def test_import_formats(store: LabelStore) -> None:
    store.add(_label("a1", "oracle", "m", 7.0))
    store.add(_label("a1", "human", "ann", 3.0))
    (task,) = export_label_studio(store, "demo", DIMS)
    assert task["data"]["text"] == "text of a1" and len(task["predictions"]) == 2
    assert task["predictions"][0]["result"][0] == {"from_name": "impact", "to_name": "text", "type": "number",
                                                   "value": {"number": 7.0}}
    (record,) = export_argilla(store, "demo", DIMS)
    assert record["fields"]["title"] == "t a1"
    assert {s["question_name"]: s["value"] for s in record["suggestions"]} == {"impact": 3, "evidence": 5}
    assert record["suggestions"][0]["type"] == "human"


def test_out_of_range_scores_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"within 0\.\.10"):
        _label("a", "oracle", "m", 11.0)
