"""The Redis queue and its leases, against a real redis-server and a real SQLite label store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.annotate.exceptions import (
    AlreadyLabelledError,
    InvalidLabelError,
    LeaseLostError,
    NotQueuedError,
    UnknownFilterError,
)
from streams.annotate.queue import AnnotationQueue, agreement
from tests.streams.annotate.conftest import make_item
from training.labels import Label, LabelStore

Make = Callable[..., AnnotationQueue]
SCORES = {"impact": 7.0, "evidence": 5.5, "novelty": 3}


def test_items_come_out_by_priority_and_leave_once_labelled(make_queue: Make, store: LabelStore) -> None:
    queue = make_queue()
    for article_id, priority in (("low", 0.1), ("high", 0.9), ("mid", 0.5)):
        assert queue.add(make_item(article_id, priority)) == "added"
    order = []
    while (leased := queue.next("demo", "ann")) is not None:
        order.append(leased.item.article_id)
        assert queue.submit("demo", "ann", leased.item.article_id, SCORES, note="ok").finished
    assert order == ["high", "mid", "low"]
    assert queue.counts("demo") == (0, 0)
    labels = store.labels("demo", source="human")
    assert [(lb.article_id, lb.annotator, lb.scores["novelty"], lb.note) for lb in labels] == [
        ("high", "ann", 3.0, "ok"), ("mid", "ann", 3.0, "ok"), ("low", "ann", 3.0, "ok")]
    assert labels[0].text.startswith("Body of high") and labels[0].package_version == "1.0.0"


def test_an_item_is_added_once_and_not_again_when_labelled(make_queue: Make, store: LabelStore) -> None:
    queue = make_queue()
    item = make_item("a1", 0.5)
    assert [queue.add(item), queue.add(item), queue.add(item.model_copy(update={"priority": item.priority.model_copy(
        update={"score": 0.99})}))] == ["added", "present", "present"]
    assert queue.counts("demo") == (1, 0)
    queue.submit("demo", "ann", "a1", SCORES)
    assert queue.add(item) == "labelled"
    assert queue.counts("demo") == (0, 0)
    with pytest.raises(UnknownFilterError):
        queue.add(make_item("x", 0.1, filter="elsewhere"))


def test_the_one_who_holds_an_item_gets_it_back_and_nobody_else_does(make_queue: Make) -> None:
    queue = make_queue()
    queue.add(make_item("only", 0.5))
    first = queue.next("demo", "ann")
    assert first is not None and first.expires_in > 50
    again = queue.next("demo", "ann")
    assert again is not None and again.item.article_id == "only"
    assert queue.next("demo", "bob") is None
    assert queue.holder("demo", "only") == "ann"
    with pytest.raises(LeaseLostError):
        queue.submit("demo", "bob", "only", SCORES)


def test_concurrent_annotators_never_hold_the_same_item(make_queue: Make) -> None:
    queue = make_queue()
    for i in range(5):
        queue.add(make_item(f"a{i}", i / 10))
    got: dict[str, str | None] = {}
    start = threading.Barrier(8)

    def pull(name: str) -> None:
        own = make_queue()  # a client (a service instance) of its own per annotator
        start.wait()
        leased = own.next("demo", name)
        got[name] = leased.item.article_id if leased else None

    threads = [threading.Thread(target=pull, args=(f"p{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    held = [v for v in got.values() if v is not None]
    assert len(got) == 8 and sorted(held) == [f"a{i}" for i in range(5)]
    assert {queue.holder("demo", a) for a in held} == {n for n, v in got.items() if v is not None}


def test_an_abandoned_item_returns_when_its_lease_expires(make_queue: Make) -> None:
    queue = make_queue(lease_seconds=0.4)
    queue.add(make_item("a1", 0.5))
    assert queue.next("demo", "ann") is not None
    assert queue.next("demo", "bob") is None
    time.sleep(0.6)
    taken = queue.next("demo", "bob")
    assert taken is not None and taken.item.article_id == "a1"
    # ann's lease is gone and bob holds the item: ann's late answer is refused, bob's is stored.
    with pytest.raises(LeaseLostError):
        queue.submit("demo", "ann", "a1", SCORES)
    assert queue.submit("demo", "bob", "a1", SCORES).finished


def test_a_late_answer_counts_when_nobody_took_the_item_since(make_queue: Make) -> None:
    queue = make_queue(lease_seconds=0.3)
    queue.add(make_item("a1", 0.5))
    assert queue.next("demo", "ann") is not None
    time.sleep(0.5)
    assert queue.holder("demo", "a1") is None
    assert queue.submit("demo", "ann", "a1", SCORES).finished


def test_overlap_needs_that_many_different_people(make_queue: Make, store: LabelStore) -> None:
    queue = make_queue(overlap=2)
    queue.add(make_item("a1", 0.5))
    leased = queue.next("demo", "ann")
    assert leased is not None and leased.labels_needed == 2
    assert not queue.submit("demo", "ann", "a1", {"impact": 2, "evidence": 5, "novelty": 8}).finished
    # Still queued, but never to ann again.
    assert queue.next("demo", "ann") is None
    with pytest.raises(AlreadyLabelledError):
        queue.submit("demo", "ann", "a1", SCORES)
    second = queue.next("demo", "bob")
    assert second is not None and second.labels_needed == 1
    assert queue.submit("demo", "bob", "a1", {"impact": 4, "evidence": 5, "novelty": 5}).finished
    assert queue.next("demo", "cy") is None
    stats = queue.stats("demo")
    assert (stats.human_labels, stats.by_annotator, stats.multi_labelled) == (2, {"ann": 1, "bob": 1}, 1)
    assert {d: a.mean_abs_diff for d, a in stats.agreement.items()} == {"evidence": 0.0, "impact": 2.0,
                                                                        "novelty": 3.0}
    assert len(store.labels("demo", source="human")) == 2


def test_one_annotator_never_labels_one_item_twice(make_queue: Make, store: LabelStore) -> None:
    queue = make_queue()
    queue.add(make_item("a1", 0.5))
    queue.next("demo", "ann")
    queue.submit("demo", "ann", "a1", SCORES)
    with pytest.raises(NotQueuedError):  # overlap 1: labelled and gone
        queue.submit("demo", "ann", "a1", SCORES)
    assert len(store.labels("demo")) == 1


def test_a_label_stored_before_a_crash_is_not_asked_for_again(make_queue: Make, store: LabelStore) -> None:
    # The service stored ann's label and died before Redis heard of it.
    queue = make_queue(overlap=2)
    queue.add(make_item("a1", 0.9))
    queue.add(make_item("a2", 0.1))
    store.add(Label(article_id="a1", filter="demo", source="human", annotator="ann", scores=SCORES))
    leased = queue.next("demo", "ann")
    assert leased is not None and leased.item.article_id == "a2"
    assert queue.holder("demo", "a1") is None
    other = queue.next("demo", "bob")
    assert other is not None and other.item.article_id == "a1" and other.labels_needed == 1


def test_a_skipped_item_goes_to_the_others(make_queue: Make) -> None:
    queue = make_queue()
    queue.add(make_item("a1", 0.9))
    queue.add(make_item("a2", 0.1))
    first = queue.next("demo", "ann")
    assert first is not None and first.item.article_id == "a1"
    queue.skip("demo", "ann", "a1")
    after = queue.next("demo", "ann")
    assert after is not None and after.item.article_id == "a2"
    theirs = queue.next("demo", "bob")
    assert theirs is not None and theirs.item.article_id == "a1"
    with pytest.raises(NotQueuedError):
        queue.skip("demo", "ann", "nope")


@pytest.mark.parametrize(("scores", "note", "problem"), [
    ({**SCORES, "extra": 1}, None, "unknown dimension"),
    ({"impact": 1, "evidence": 2}, None, "missing score"),
    ({**SCORES, "impact": 10.5}, None, "within 0..10"),
    ({**SCORES, "impact": -1}, None, "within 0..10"),
    ({**SCORES, "impact": float("nan")}, None, "within 0..10"),
    ({**SCORES, "impact": "seven"}, None, "must be a number"),
    ({**SCORES, "impact": True}, None, "must be a number"),
    (SCORES, "x" * 2001, "at most 2000"),
])
def test_every_input_is_validated(make_queue: Make, store: LabelStore, scores: dict[str, object],
                                  note: str | None, problem: str) -> None:
    queue = make_queue()
    queue.add(make_item("a1", 0.5))
    queue.next("demo", "ann")
    with pytest.raises(InvalidLabelError, match=problem):
        queue.submit("demo", "ann", "a1", scores, note)
    assert store.labels("demo") == []
    assert queue.holder("demo", "a1") == "ann"  # the lease is kept: the person fixes the typo


def test_unknown_filters_and_ids_are_refused(make_queue: Make) -> None:
    queue = make_queue()
    with pytest.raises(UnknownFilterError):
        queue.next("nope", "ann")
    with pytest.raises(NotQueuedError):
        queue.item("demo", "x" * 600)


def test_a_restarted_service_keeps_queue_leases_and_labels(make_queue: Make, store: LabelStore,
                                                        tmp_path: Path) -> None:
    before = make_queue()
    before.add(make_item("a1", 0.9))
    before.add(make_item("a2", 0.1))
    held = before.next("demo", "ann")
    assert held is not None
    before.close()
    # A new service: new Redis connection, new database engine, same Redis and database file.
    after = make_queue()
    after.store = LabelStore(tmp_path / "labels.db")
    again = after.next("demo", "ann")
    assert again is not None and again.item.article_id == "a1"
    other = after.next("demo", "bob")
    assert other is not None and other.item.article_id == "a2"
    assert after.submit("demo", "ann", "a1", SCORES).finished
    assert [lb.article_id for lb in store.labels("demo")] == ["a1"]


def test_agreement_is_the_mean_pairwise_absolute_difference() -> None:
    def lb(article: str, who: str, **scores: float) -> Label:
        return Label(article_id=article, filter="demo", source="human", annotator=who, scores=scores)

    result = agreement([lb("a", "x", d=1), lb("a", "y", d=3), lb("a", "z", d=5),  # pairs 2, 4, 2 -> 8/3
                        lb("b", "x", d=6), lb("b", "y", d=6),                      # 0
                        lb("c", "x", d=9)])                                        # one label: not counted
    assert result["d"].items == 2 and result["d"].mean_abs_diff == pytest.approx((8 / 3 + 0) / 2, abs=1e-3)
