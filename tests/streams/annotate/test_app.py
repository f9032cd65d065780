"""The JSON API and the page's safety rules: the app under uvicorn on loopback, a real Redis and database."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from streams.annotate.app import SESSION_COOKIE, create_app
from streams.annotate.queue import AnnotationQueue
from tests.streams.annotate.conftest import LiveServer, make_item, serve, settings_for
from training.labels import Label, LabelStore

Make = Callable[..., AnnotationQueue]
SCORES = {"impact": 7, "evidence": 5.5, "novelty": 3}


@pytest.fixture
def tokens(store: LabelStore) -> dict[str, str]:
    return {name: store.add_annotator(name) for name in ("ann", "bob")}


@pytest.fixture
def client_for(make_queue: Make, store: LabelStore, redis_url_: str, tmp_path: Path,
               prefix: str) -> Iterator[Callable[..., Client]]:
    """A new service per call (a restarted one) on the same Redis and database, and a browser-less client."""
    made: list[Client] = []

    def make(**options: object) -> Client:
        queue = make_queue(**options)
        app = create_app(settings_for(redis_url_, tmp_path / "labels.db", prefix), queue, store)
        client = Client(serve(app))
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop()


class Client(httpx.Client):
    """An HTTP client (with a cookie jar) of one running service."""

    def __init__(self, live: LiveServer) -> None:
        super().__init__(base_url=live.url, timeout=10)
        self.live = live

    def stop(self) -> None:
        self.close()
        self.live.stop()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_the_api_needs_a_known_token(client_for: Callable[..., Client], tokens: dict[str, str]) -> None:
    client = client_for()
    assert client.post("/api/next", json={"filter": "demo"}).status_code == 401
    assert client.post("/api/next", json={"filter": "demo"}, headers=auth("wrong")).status_code == 401
    assert client.post("/api/next", json={"filter": "demo"}, headers=auth("x" * 5000)).status_code == 401
    answer = client.get("/api/filters", headers=auth(tokens["ann"]))
    assert answer.status_code == 200 and answer.json()["annotator"] == "ann"


def test_next_submit_skip_through_the_api(client_for: Callable[..., Client], make_queue: Make,
                                          store: LabelStore, tokens: dict[str, str]) -> None:
    queue = make_queue()
    queue.add(make_item("a1", 0.9))
    queue.add(make_item("a2", 0.5))
    store.add(Label(article_id="a1", filter="demo", source="oracle", annotator="gpt-x", scores={"impact": 8.0}))
    client = client_for()
    ann = auth(tokens["ann"])
    got = client.post("/api/next", json={"filter": "demo"}, headers=ann).json()
    assert got["item"]["article_id"] == "a1" and got["oracle"] == [{"annotator": "gpt-x", "scores": {"impact": 8.0}}]
    assert got["labels_needed"] == 1 and got["lease_seconds_left"] > 0
    bad = client.post("/api/submit", json={"filter": "demo", "article_id": "a1", "scores": {**SCORES, "impact": 11}},
                      headers=ann)
    assert bad.status_code == 422 and "0..10" in bad.json()["error"]
    assert client.post("/api/submit", json={"filter": "other", "article_id": "a1", "scores": SCORES},
                       headers=ann).status_code == 404
    assert client.post("/api/submit", json={"filter": "demo", "article_id": "a1", "scores": SCORES, "x": 1},
                       headers=ann).status_code == 422
    # bob cannot answer for the item ann holds.
    assert client.post("/api/submit", json={"filter": "demo", "article_id": "a1", "scores": SCORES},
                       headers=auth(tokens["bob"])).status_code == 409
    done = client.post("/api/submit", json={"filter": "demo", "article_id": "a1", "scores": SCORES, "note": "n"},
                       headers=ann)
    assert done.status_code == 200 and done.json()["finished"] is True
    assert client.post("/api/next", json={"filter": "demo"}, headers=ann).json()["item"]["article_id"] == "a2"
    assert client.post("/api/skip", json={"filter": "demo", "article_id": "a2"}, headers=ann).json() == {
        "skipped": True}
    assert client.post("/api/next", json={"filter": "demo"}, headers=ann).json() == {"item": None}
    stats = client.get("/api/stats", params={"filter": "demo"}, headers=ann).json()["stats"][0]
    assert (stats["queued"], stats["human_labels"]) == (1, 1)
    assert [(lb.annotator, lb.note) for lb in store.labels("demo", source="human")] == [("ann", "n")]


def test_a_restart_mid_lease_loses_nothing(client_for: Callable[..., Client], make_queue: Make,
                                          store: LabelStore, tokens: dict[str, str]) -> None:
    make_queue().add(make_item("a1", 0.9))
    make_queue().add(make_item("a2", 0.1))
    first = client_for()
    assert first.post("/api/next", json={"filter": "demo"}, headers=auth(tokens["ann"])).json()["item"][
        "article_id"] == "a1"
    first.stop()
    second = client_for()  # a new service process on the same Redis and database
    assert second.post("/api/next", json={"filter": "demo"}, headers=auth(tokens["bob"])).json()["item"][
        "article_id"] == "a2"
    assert second.post("/api/next", json={"filter": "demo"}, headers=auth(tokens["ann"])).json()["item"][
        "article_id"] == "a1"
    assert second.post("/api/submit", json={"filter": "demo", "article_id": "a1", "scores": SCORES},
                       headers=auth(tokens["ann"])).status_code == 200
    assert [lb.article_id for lb in store.labels("demo")] == ["a1"]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def test_forms_need_the_session_csrf_token_and_the_cookie_is_strict(client_for: Callable[..., Client],
                                                                     tokens: dict[str, str]) -> None:
    client = client_for()
    page = client.get("/login")
    cookie = page.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script at all
    assert client.post("/login", data={"token": tokens["ann"]}).status_code == 403
    assert client.post("/login", data={"token": tokens["ann"], "csrf": "forged"}).status_code == 403
    signed = client.post("/login", data={"token": tokens["ann"], "csrf": _csrf(page.text)})
    assert signed.status_code == 303 and signed.headers["location"] == "/queue"
    queue_page = client.get("/queue")
    assert "signed in as" in queue_page.text
    # The token of the signed-out page is not the signed-in session's: a form from before sign-in is refused.
    assert client.post("/next", data={"filter": "demo", "csrf": _csrf(page.text)}).status_code == 403
    # Another browser (no cookie) with a copied token is refused too.
    other = client_for()
    assert other.post("/next", data={"filter": "demo", "csrf": _csrf(queue_page.text)}).status_code in (303, 403)
    assert other.get("/queue").headers["location"] == "/login"


def test_article_text_is_escaped_and_links_are_web_links(client_for: Callable[..., Client], make_queue: Make,
                                                          tokens: dict[str, str]) -> None:
    make_queue().add(make_item("x1", 0.9, title="<script>alert(1)</script>").model_copy(
        update={"url": "javascript:alert(1)"}))
    client = client_for()
    page = client.get("/login")
    client.post("/login", data={"token": tokens["ann"], "csrf": _csrf(page.text)})
    item = client.post("/next", data={"filter": "demo", "csrf": _csrf(client.get("/queue").text)},
                       follow_redirects=True)
    assert item.status_code == 200 and "x1" in item.text
    assert "<script>alert(1)</script>" not in item.text and "&lt;script&gt;" in item.text
    assert "javascript:" not in item.text


def test_oversized_bodies_are_refused_unread(client_for: Callable[..., Client], tokens: dict[str, str]) -> None:
    client = client_for()
    answer = client.post("/api/skip", content=b"x" * 300_000, headers={**auth(tokens["ann"]),
                                                                       "content-type": "application/json"})
    assert answer.status_code == 413


def test_a_refused_form_keeps_what_the_person_typed(client_for: Callable[..., Client], make_queue: Make,
                                                    store: LabelStore, tokens: dict[str, str]) -> None:
    make_queue().add(make_item("a1", 0.9))
    client = client_for()
    client.post("/login", data={"token": tokens["ann"], "csrf": _csrf(client.get("/login").text)})
    page = client.post("/next", data={"filter": "demo", "csrf": _csrf(client.get("/queue").text)},
                       follow_redirects=True)
    form = {"csrf": _csrf(page.text), "filter": "demo", "article_id": "a1", "score.impact": "12",
            "score.evidence": "3.5", "score.novelty": "1", "note": "my careful note"}
    refused = client.post("/submit", data=form)
    assert refused.status_code == 422 and "within 0..10" in refused.text
    assert 'value="3.5"' in refused.text and "my careful note" in refused.text
    assert client.post("/submit", data={**form, "score.bogus": "1", "score.impact": "2"}).status_code == 422
    assert client.post("/submit", data={**form, "filter": "nope", "score.impact": "2"}).status_code == 404
    stored = client.post("/submit", data={**form, "score.impact": "2"})
    assert stored.status_code == 303 and "submitted" in stored.headers["location"]
    assert [lb.scores for lb in store.labels("demo", source="human")] == [{"impact": 2.0, "evidence": 3.5,
                                                                          "novelty": 1.0}]
