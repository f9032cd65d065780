"""The annotator page in headless Chromium (playwright), served by uvicorn on loopback: sign in, pull, score,
submit, skip; a wrong token is refused."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.annotate.app import create_app
from streams.annotate.queue import AnnotationQueue
from tests.streams.annotate.conftest import LiveServer, make_item, serve, settings_for
from training.labels import Label, LabelStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser_page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        # The distribution's Chromium, never a downloaded one (`playwright install` needs the network).
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        context.close()
        browser.close()


@pytest.fixture
def live(make_queue: Callable[..., AnnotationQueue], store: LabelStore, redis_url_: str, tmp_path: Path,
         prefix: str) -> Iterator[LiveServer]:
    queue = make_queue()
    queue.add(make_item("first", 0.9, title="Solar co-op powers a village"))
    queue.add(make_item("second", 0.4, title="A second story"))
    store.add(Label(article_id="first", filter="demo", source="oracle", annotator="gpt-x",
                    scores={"impact": 8.5, "evidence": 6.0, "novelty": 2.0}))
    server = serve(create_app(settings_for(redis_url_, tmp_path / "labels.db", prefix), queue, store))
    yield server
    server.stop()


def test_sign_in_pull_score_submit_and_skip(browser_page: Any, live: LiveServer, store: LabelStore) -> None:
    page = browser_page
    token = store.add_annotator("ann")

    page.goto(live.url + "/")
    page.fill("#token", "not-a-token")
    page.click("#sign-in")
    assert "not known" in page.inner_text("#problem")
    assert page.locator("#who").count() == 0

    page.fill("#token", token)
    page.click("#sign-in")
    assert page.inner_text("#who") == "ann"

    page.click("#next-demo")
    assert page.inner_text("#title") == "Solar co-op powers a village"
    assert "Body of first." in page.inner_text("#article-text")
    assert page.locator("td.model").all_inner_texts() == ["4.0", "5.0", "6.0"]
    assert page.locator("td.oracle").all_inner_texts() == ["8.5", "6.0", "2.0"]
    assert page.input_value("#score-impact") == "4.0"  # prefilled with the model's score, to adjust

    page.fill("#score-impact", "11")  # the browser's own check refuses it, nothing is sent
    page.click("#submit")
    assert store.labels("demo", source="human") == []
    page.fill("#score-impact", "8.5")
    page.fill("#note", "clear local impact")
    page.click("#submit")
    assert page.inner_text("#message") == "Label stored."

    page.click("#next-demo")
    assert page.inner_text("#title") == "A second story"
    page.click("#skip")
    assert page.inner_text("#message") == "Skipped."
    page.click("#next-demo")
    assert "Nothing left" in page.inner_text("#message")

    labels = store.labels("demo", source="human")
    assert [(lb.article_id, lb.annotator, lb.scores, lb.note) for lb in labels] == [
        ("first", "ann", {"impact": 8.5, "evidence": 5.0, "novelty": 6.0}, "clear local impact")]

    page.click("#logout")
    assert page.locator("#token").count() == 1
    page.goto(live.url + "/queue")
    assert page.url.endswith("/login")
