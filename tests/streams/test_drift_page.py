"""The reports page (``fluxscore drift serve``): sign-in, the filter list, the reports; then in a real browser."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from streams.drift.page import COOKIE, create_app
from streams.drift.store import ReportStore
from streams.drift.windows import DriftTracker
from tests.streams.test_monitor import _records

TOKEN = "s3cret-token-for-tests"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report directory with two windows of ``demo``, the second alerting."""
    root = tmp_path_factory.mktemp("reports")
    tracker = DriftTracker(reference_size=100, window=100, every=100)
    store = ReportStore(root)
    shifted = {"blocked_share": 0.5}
    for part in (_records(200, 5.0, seed=1), _records(100, 5.0, seed=2, start=200, **shifted)):
        for record in part:
            tracker.add(record)
            for name, trigger in tracker.due():
                store.save(tracker.run(tracker.take(name, trigger)))
    return root


def _signed_in(client: TestClient) -> None:
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303


def test_pages_need_the_token(reports: Path) -> None:
    client = TestClient(create_app(reports, TOKEN), base_url="http://127.0.0.1")
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login?next=/"
    assert client.get("/reports/demo/x.html", follow_redirects=False).status_code == 303
    wrong = client.post("/login", data={"token": "guess", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    right = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/", "no redirect off the site"
    cookie = right.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie


def test_the_page_lists_filters_and_serves_reports(reports: Path) -> None:
    client = TestClient(create_app(reports, TOKEN), base_url="http://127.0.0.1")
    _signed_in(client)
    index = client.get("/")
    assert index.status_code == 200 and 'data-filter="demo"' in index.text
    assert "prefilter_pass_rate" in index.text and "alert" in index.text
    assert "default-src 'none'" in index.headers["content-security-policy"]
    listing = client.get("/filters/demo")
    assert listing.text.count('class="report"') == 2
    link = listing.text.split('class="report" href="')[1].split('"')[0]
    report = client.get(link)
    assert report.status_code == 200 and "fluxscore drift" in report.text and "demo@1.0.0" in report.text
    assert report.headers["content-security-policy"].startswith("sandbox")
    assert client.get("/reports/demo/..%2F..%2Fsecrets.html").status_code == 404
    assert client.get("/filters/nope").status_code == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(reports: Path) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(reports, TOKEN), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_person_signs_in_and_opens_a_report_in_chromium(served: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extras)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(served + "/")
            assert "/login" in page.url
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("#filters")
            row = page.locator('tr[data-filter="demo"]')
            assert "alert" in row.inner_text() and "prefilter_pass_rate" in row.inner_text()
            page.screenshot(path=str(tmp_path / "filters.png"))
            assert page.evaluate("document.cookie") == "", "the session cookie is HttpOnly"
            row.locator("a.report").click()
            page.wait_for_load_state()
            page.wait_for_selector("text=fluxscore drift — demo@1.0.0", timeout=20_000)
            page.screenshot(path=str(tmp_path / "report.png"))
        finally:
            browser.close()
