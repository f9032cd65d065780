"""The feedback initiative: recent human labels and corrections, weighted by engagement, continue the
parent's adapter (real tiny Gemma base, real MiniLM probe, real SQLite label store, real Ledger)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from scoring.article import validate_article
from scoring.package import FilterPackage, load_package
from scoring.text import article_text
from tests.training.evolve.initiatives._parents import DIMS, context, shared_parent, synth_records
from training.evolve.exceptions import BudgetExhausted
from training.evolve.initiatives import feedback
from training.evolve.ledger import Ledger
from training.export import default_prompt, scaffold_config, write_scaffold
from training.feedback import FeedbackEvent, event_key
from training.labels import Label, LabelStore
from training.synth import write_jsonl

pytestmark = pytest.mark.timeout(120)
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, tiny_gemma: Path) -> tuple[FilterPackage, Path]:
    return shared_parent(tmp_path_factory.getbasetemp(), tiny_gemma)


def _scores(record: dict) -> dict[str, float]:
    return {d: float(v["score"]) for d, v in record["demo_analysis"].items()}


def _human(store: LabelStore, record: dict, hours_ago: float, **update: float) -> None:
    store.add(Label(article_id=record["id"], filter="demo", source="human", annotator="ann",
                    scores={**_scores(record), **update}, text=article_text(validate_article(record)),
                    labelled_at=NOW - timedelta(hours=hours_ago)))


_offsets = itertools.count()


def _event(store: LabelStore, article_id: str, event: str, hours_ago: float, weight: float = 1.0,
           scores: dict[str, float] | None = None) -> None:
    ev = FeedbackEvent(article_id=article_id, event=event, weight=weight, at=NOW - timedelta(hours=hours_ago),
                       scores=scores)
    store.add_feedback("demo", [(ev, event_key(ev, "feedback.demo", 0, next(_offsets)))])


def test_rows_take_the_window_weight_by_engagement_and_never_read_held_out(tmp_path: Path) -> None:
    body = scaffold_config("demo", DIMS)
    package = write_scaffold(tmp_path / "demo" / "1.0.0", body, default_prompt(body))
    new = synth_records(8, seed=11)      # labelled by people, not in the round's data
    known = synth_records(4, seed=12)    # the round's data: oracle-labelled, with text
    data = tmp_path / "data.jsonl"
    write_jsonl(known, data)
    db = f"sqlite:///{tmp_path}/labels.db"
    store = LabelStore(db)
    _human(store, new[0], 1)                              # in the window
    _human(store, new[1], 30)                             # too old (window: 24 h)
    _human(store, new[2], -1)                             # after the window's end
    _human(store, new[3], 2)
    _human(store, new[4], 2)                              # held out
    _human(store, new[5], 3, wellbeing=2.0)
    _event(store, new[0]["id"], "share", 1, weight=2.0)         # 1 + 3 x 2 = 7
    _event(store, new[3]["id"], "report", 1, weight=5.0)        # 1 - 2 x 5 -> the floor 0.25
    _event(store, new[3]["id"], "like", 1, weight=9.0)          # not valued: no effect
    _event(store, new[5]["id"], "correction", 2, scores={"wellbeing": 9.0})   # a correction wins, other dims kept
    _event(store, new[5]["id"], "correction", 1.5, scores={"wellbeing": 8.0})  # … the latest one
    _event(store, known[0]["id"], "correction", 1, scores=dict.fromkeys(DIMS, 1.0))  # text from the data
    _event(store, known[1]["id"], "click", 1, weight=4.0)  # engagement on a labelled row: 1 + 4 = 5
    _event(store, "nobody-knows", "correction", 1, scores=dict.fromkeys(DIMS, 5.0))  # no text: left out
    _event(store, "nobody-knows-2", "click", 1)            # no label: engagement makes none
    _event(store, known[2]["id"], "click", 40, weight=9.0)  # engagement outside the window
    params = feedback.Params(hours=24, event_weights={"share": 3.0, "click": 1.0, "report": -2.0},
                             min_weight=0.25, max_weight=8.0)
    rows = feedback.feedback_rows(package, params, labels_db=db, train_data=data,
                                  exclude=frozenset({new[4]["id"]}), until=NOW)
    got = {rid: (w, src, dict(zip(DIMS, t, strict=True)))
           for rid, w, src, t in zip(rows.ids, rows.weights, rows.sources, rows.targets, strict=True)}
    assert set(got) == {new[0]["id"], new[3]["id"], new[5]["id"], known[0]["id"], known[1]["id"]}
    assert got[new[0]["id"]][:2] == (7.0, "human")
    assert got[new[3]["id"]][:2] == (0.25, "human")
    assert got[new[5]["id"]][1] == "correction"
    assert got[new[5]["id"]][2] == {**_scores(new[5]), "wellbeing": 8.0}
    assert got[known[0]["id"]] == (1.0, "correction", dict.fromkeys(DIMS, 1.0))
    assert got[known[1]["id"]] == (5.0, "engaged", _scores(known[1]))
    assert rows.counts["left out: held out or a judging split"] == 1
    assert rows.counts["left out: no text known for the article"] == 1
    assert rows.counts["left out: engagement on an unlabelled article"] == 1
    assert rows.counts["unvalued events"] == 1
    # The text of a row is the text the models read.
    assert rows.texts[rows.ids.index(known[0]["id"])] == article_text(validate_article(known[0]))


def _human_store(tmp_path: Path, n: int = 6) -> str:
    db = f"sqlite:///{tmp_path}/labels.db"
    store = LabelStore(db)
    for i, record in enumerate(synth_records(n, seed=21)):
        _human(store, record, 1 + i)
        if i == 0:
            _event(store, record["id"], "share", 1, weight=2.0)
    store.close()
    return db


def _jobs(ledger: Ledger) -> list[str]:
    """The jobs charged, in order (a long job's partial charges collapsed into one)."""
    jobs: list[str] = []
    for entry in ledger.entries:
        if entry["kind"] == "charge" and (not jobs or jobs[-1] != entry["job"]):
            jobs.append(entry["job"])
    return jobs


def _tensors(adapter: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()}


def test_training_starts_from_the_parent_adapter(parent: tuple[FilterPackage, Path], tmp_path: Path) -> None:
    package, data = parent
    db = _human_store(tmp_path)
    # Learning rates 0: one epoch leaves the weights where they started, which must be the parent's.
    ctx = context(tmp_path, package, data, "feedback", {"hours": 12, "until": NOW.isoformat(), "epochs": 1,
                                                        "lr": 0.0, "head_lr": 0.0}, labels_db=db)
    params = feedback.Params.model_validate(dict(ctx.params))
    candidate = feedback.new_candidate(ctx, "feedback")
    rows = feedback.feedback_rows(candidate, params, labels_db=db, train_data=data, exclude=frozenset(), until=NOW)
    assert len(rows) == 6 and max(rows.weights) > 1.0
    val = rows.texts[:2], np.asarray(rows.targets[:2])
    state = feedback.continue_adapter(ctx, candidate, rows, *val, params)
    parent_weights = _tensors(package.file("adapter"))
    epoch = _tensors(tmp_path / "work" / "checkpoints" / "feedback" / "epoch-1")
    assert set(epoch) == set(parent_weights)
    for key, value in parent_weights.items():
        np.testing.assert_array_equal(epoch[key], value, err_msg=key)
    # … and so the validation MAE after the epoch is the parent's, measured before it.
    assert state["epochs"][0]["val_mae"] == pytest.approx(state["parent_val_mae"], abs=1e-5)


def test_end_to_end_stops_at_the_allocation_and_resumes(parent: tuple[FilterPackage, Path], tmp_path: Path) -> None:
    package, data = parent
    db = _human_store(tmp_path)
    params = {"hours": 12, "until": NOW.isoformat(), "epochs": 2, "lr": 2e-3, "head_lr": 1e-2, "batch_size": 8}
    ledger = Ledger(tmp_path / "ledger.jsonl")
    # The meter's clock stands still until epoch 2 starts, then jumps an hour ($3.60 at $3.60/h): the check
    # of epoch 2's first step must stop the job, after epoch 1's checkpoint was written.
    now = [0.0]

    def progress(description: str, completed: int, total: int | None) -> None:
        if description.startswith("feedback epoch 2/"):
            now[0] = 3600.0

    stopped = context(tmp_path, package, data, "feedback", params, labels_db=db, ledger=ledger)
    meter = ledger.meter("feedback", allocation=0.5, price_per_hour=3.6, device="cpu", clock=lambda: now[0])
    stopped = replace(stopped, meter=meter, progress=progress)
    with pytest.raises(BudgetExhausted):
        feedback.run(stopped)
    state_dir = tmp_path / "work" / "checkpoints" / "feedback"
    assert (state_dir / "epoch-1").is_dir() and not (state_dir / "epoch-2").exists()
    assert _jobs(ledger) == ["feedback-rows", "feedback-epochs"]
    assert ledger.spent("feedback") == pytest.approx(3.6)

    seen: list[str] = []
    resumed = context(tmp_path, package, data, "feedback", params, labels_db=db,
                      ledger=Ledger(tmp_path / "ledger.jsonl"))
    resumed = replace(resumed, progress=lambda d, c, t: seen.append(d))
    outcome = feedback.run(resumed)
    assert any(d.startswith("feedback epoch 2/2") for d in seen)
    assert not any(d.startswith("feedback epoch 1/2") for d in seen)   # epoch 1 came from its checkpoint
    assert outcome.package_dir is not None
    candidate = load_package(outcome.package_dir)
    candidate.verify()                                                 # manifest written, hashes match
    assert candidate.version == "1.0.0-feedback" and candidate.name == "demo"
    assert [e["epoch"] for e in outcome.notes["epochs"]] == [1, 2]
    assert outcome.notes["feedback_rows"] == 6 and outcome.notes["weights"]["max"] == pytest.approx(5.0)
    changed = _tensors(candidate.file("adapter"))
    assert any(not np.array_equal(changed[k], v) for k, v in _tensors(package.file("adapter")).items())
    assert _jobs(Ledger(tmp_path / "ledger.jsonl")) == ["feedback-rows", "feedback-epochs", "feedback-rows",
                                                         "feedback-epochs", "feedback-finish"]
    assert load_package(package.path).version == "1.0.0"               # the parent is untouched
