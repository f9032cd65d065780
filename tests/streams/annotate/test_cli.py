"""``fluxscore annotate token|next|submit|skip`` against a running service (uvicorn on loopback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.annotate.app import create_app
from streams.annotate.cli import annotate_app
from streams.annotate.queue import AnnotationQueue
from tests.streams.annotate.conftest import LiveServer, make_item, serve, settings_for
from training.labels import LabelStore

runner = CliRunner()


@pytest.fixture
def live(make_queue: Callable[..., AnnotationQueue], store: LabelStore, redis_url_: str, tmp_path: Path,
         prefix: str) -> Iterator[LiveServer]:
    queue = make_queue()
    queue.add(make_item("a1", 0.9, title="Terminal story"))
    queue.add(make_item("a2", 0.2))
    server = serve(create_app(settings_for(redis_url_, tmp_path / "labels.db", prefix), queue, store))
    yield server
    server.stop()


def test_token_prints_a_token_once_and_stores_its_hash(tmp_path: Path) -> None:
    db = tmp_path / "labels.db"
    result = runner.invoke(annotate_app, ["token", "ann"], env={"FLUXSCORE_LABELS_DB": str(db)})
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    store = LabelStore(db)
    assert store.annotator_for(token) == "ann"
    assert token.encode() not in db.read_bytes()
    assert runner.invoke(annotate_app, ["token", "bad name!"], env={"FLUXSCORE_LABELS_DB": str(db)}).exit_code == 2


def test_next_submit_and_skip_from_a_terminal(live: LiveServer, store: LabelStore) -> None:
    env = {"FLUXSCORE_ANNOTATE_URL": live.url, "FLUXSCORE_ANNOTATE_TOKEN": store.add_annotator("ann"),
           "COLUMNS": "120"}
    shown = runner.invoke(annotate_app, ["next", "--filter", "demo"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "Terminal story" in shown.stdout and "impact" in shown.stdout and "4.0" in shown.stdout

    missing = runner.invoke(annotate_app, ["submit", "--filter", "demo", "--id", "a1", "--score", "impact=7"], env=env)
    assert missing.exit_code == 1 and "missing score" in missing.output
    done = runner.invoke(annotate_app, ["submit", "-f", "demo", "--id", "a1", "-s", "impact=7", "-s", "evidence=6.5",
                                        "-s", "novelty=2", "--note", "from the terminal"], env=env)
    assert done.exit_code == 0, done.output
    assert [(lb.article_id, lb.scores["evidence"], lb.note) for lb in store.labels("demo", source="human")] == [
        ("a1", 6.5, "from the terminal")]

    assert runner.invoke(annotate_app, ["next"], env=env).exit_code == 0  # default filter: the service's first
    skipped = runner.invoke(annotate_app, ["skip", "-f", "demo", "--id", "a2"], env=env)
    assert skipped.exit_code == 0, skipped.output
    empty = runner.invoke(annotate_app, ["next", "-f", "demo"], env=env)
    assert empty.exit_code == 0 and "nothing left" in empty.output

    refused = runner.invoke(annotate_app, ["next"], env={**env, "FLUXSCORE_ANNOTATE_TOKEN": "wrong"})
    assert refused.exit_code == 1 and "401" in refused.output
    bad = runner.invoke(annotate_app, ["submit", "-f", "demo", "--id", "a1", "-s", "impact"], env=env)
    assert bad.exit_code == 2


def test_the_client_says_when_the_service_is_not_running(tmp_path: Path) -> None:
    from streams.metrics import free_port

    env = {"FLUXSCORE_ANNOTATE_URL": f"http://127.0.0.1:{free_port()}", "FLUXSCORE_ANNOTATE_TOKEN": "t"}
    result = runner.invoke(annotate_app, ["next", "-f", "demo"], env=env)
    assert result.exit_code == 1 and "cannot reach the annotator service" in result.output
