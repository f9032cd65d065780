"""Saved drift reports: HTML, a snapshot that reloads, the summary, the Evidently workspace, the offline command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from scoring.drift import EmbeddingSample, ReferenceProfile, monitor_row, project
from streams.drift.report import DriftResult
from streams.drift.store import ReportStore, latest_summary, list_reports, report_file
from streams.drift.windows import DriftTracker
from tests.streams.test_monitor import _records


@pytest.fixture(scope="module")
def result() -> DriftResult:
    emb = np.random.default_rng(0)

    def embedder(key: object, texts: list[str]) -> np.ndarray:
        shift = 2.0 if texts[0].startswith("other") else 0.0
        return emb.normal(shift, 1.0, (len(texts), 384)).astype(np.float32)

    tracker = DriftTracker(reference_size=100, window=100, every=100, sample_size=30, embedder=embedder)
    for r in _records(100, 5.0, seed=1):
        tracker.add(r)
    windows = tracker.filters["demo"]
    from scoring.embedding import EmbeddingKey

    windows.embedding_key, windows.embedding_note = EmbeddingKey("encoder", "", 8, 0), None
    windows.reference_texts = ["news"] * 30
    for r in _records(100, 5.0, seed=2, start=100, languages=("fr",), weights=(1,)):
        tracker.add(r)
        tracker.add_text(["demo"], "other topic")
    [(name, trigger)] = tracker.due()
    return tracker.run(tracker.take(name, trigger))


def test_a_report_names_its_reference_and_holds_embedding_drift(result: DriftResult) -> None:
    summary = result.summary
    assert summary["reference"]["kind"] == "window" and "first 100 records of demo@1.0.0" in summary["reference"][
        "detail"]
    assert summary["embeddings"]["available"] and summary["embeddings"]["drifted"]
    assert {a.rule for a in result.alerts} >= {"language_mix", "embedding_drift"}
    assert summary["status"] == "alert" and summary["window"] == {"seq": 1, "rows": 100, "new_rows": 100,
                                                                  "trigger": "count"}
    metrics = result.snapshot.dict()["metrics"] if result.snapshot else []
    assert any("EmbeddingsDrift" in m["metric_name"] for m in metrics)
    assert any(m["config"].get("column") == "language" for m in metrics)


def test_saved_reports_reload_and_are_self_contained(result: DriftResult, tmp_path: Path) -> None:
    from evidently.core.report import Snapshot

    store = ReportStore(tmp_path / "reports", keep=2)
    written = store.save(result)
    loaded = Snapshot.load(written["snapshot"])
    assert [m["metric_name"] for m in loaded.dict()["metrics"]] == [
        m["metric_name"] for m in result.snapshot.dict()["metrics"]]  # type: ignore[union-attr]
    html = Path(written["html"]).read_text()
    assert "Reference: pinned production window" in html and "language_mix" in html
    # Self-contained: every script inline, no stylesheet or script from elsewhere.
    assert "<script>" in html and not re.search(r"<(script|link)[^>]+(src|href)=", html)
    summary = orjson.loads(Path(written["summary"]).read_bytes())
    assert summary["status"] == "alert" and summary["files"]["html"] == Path(written["html"]).name
    assert latest_summary(tmp_path / "reports", "demo") == summary
    for _ in range(3):
        store.save(result)
    entries = list_reports(tmp_path / "reports", "demo")
    assert len(entries) == 2 and all(e.has_html and e.has_snapshot for e in entries), "only the newest 2 kept"
    assert report_file(tmp_path / "reports", "demo", "../../etc/passwd") is None
    assert report_file(tmp_path / "reports", "demo", entries[0].html) is not None


def test_reports_go_to_an_evidently_workspace(result: DriftResult, tmp_path: Path) -> None:
    from evidently.ui.workspace import Workspace

    store = ReportStore(workspace=tmp_path / "ws", keep=2)
    for _ in range(3):
        assert store.save(result)["workspace_run"]
    ws = Workspace(str(tmp_path / "ws"))
    [project] = [p for p in ws.list_projects() if p.name == "fluxscore demo"]
    runs = ws.list_runs(project.id)
    assert len(runs) == 2
    assert ws.get_run(project.id, runs[0]) is not None


def test_a_profile_round_trips_and_projects_stably() -> None:
    rng = np.random.default_rng(3)
    full = rng.normal(size=(40, 384)).astype(np.float32)
    sample = EmbeddingSample.of(full, model="m", prefix="", head_tokens=8, tail_tokens=0)
    assert np.allclose(sample.array(), project(full), atol=2e-2)
    records = _records(30, 5.0, seed=4)
    profile = ReferenceProfile(filter="demo", version="1.0.0", source="test", articles=30,
                               rows=[monitor_row(r) for r in records], embeddings=sample)
    again = ReferenceProfile.model_validate(orjson.loads(profile.to_json()))
    assert again == profile and again.to_json() == profile.to_json()


def test_drift_report_command_renders_windows_with_a_progress_bar(tmp_path: Path) -> None:
    from streams.drift.cli import drift_app

    records = _records(300, 5.0, seed=5) + _records(100, 5.0, seed=6, start=300, blocked_share=0.5)
    source = tmp_path / "scores.jsonl"
    source.write_bytes(b"".join(r.to_json() + b"\n" for r in records) + b"not json\n")
    out = tmp_path / "out"
    run = CliRunner().invoke(drift_app, ["report", "--filter", "demo", "--from", str(source), "--window", "100",
                                         "--reference-size", "100", "-o", str(out), "--fail-on-alert"])
    assert run.exit_code == 3, run.output
    assert "drift report" in run.output and "1 unreadable" in run.output
    entries = list_reports(out, "demo")
    assert len(entries) == 3 and all(e.has_html and e.has_snapshot for e in entries)
    last = latest_summary(out, "demo")
    assert last is not None and "prefilter_pass_rate" in {a["rule"] for a in last["alerts"]}
