"""FLUXSCORE_FILTERS_PATH adds package roots searched *before* the bundled ones, never instead of them.

One regression test per caller of the search: pipeline load, the CLI, hot reload, the shadow role and
training. Each failed while the extra roots replaced the bundled ``filters/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scoring.package import BUNDLED_ROOT, available, resolve, search_roots
from scoring.pipeline import Pipeline
from scoring.settings import ScoringSettings
from training.export import write_manifest

pytestmark = pytest.mark.integration


def _newer_demo(root: Path, version: str = "1.1.0") -> Path:
    """A copy of the bundled demo as a newer version under an extra root, exported as such."""
    target = root / "demo" / version
    shutil.copytree(BUNDLED_ROOT / "demo" / "1.0.0", target)
    config = yaml.safe_load((target / "filter.yaml").read_text())
    config["version"] = version
    (target / "filter.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_manifest(target)
    return target


def test_extra_roots_come_first_then_the_bundled_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXSCORE_FILTERS_PATH", str(tmp_path))
    assert search_roots() == [tmp_path, BUNDLED_ROOT]
    assert resolve("demo").version == "1.0.0", "an empty extra root hides nothing"
    _newer_demo(tmp_path)
    assert resolve("demo").version == "1.1.0" and resolve("demo@1.0.0").path.parent.parent == BUNDLED_ROOT
    assert {"demo", "demo_tech"} <= set(available())


def test_pipeline_load_finds_bundled_packages_with_an_extra_root(tmp_path: Path) -> None:
    settings = ScoringSettings.from_env({"FLUXSCORE_FILTERS_PATH": str(tmp_path), "FLUXSCORE_DEVICE": "cpu"})
    pipeline = Pipeline.load("demo_tech", settings=settings, students=False, commerce=False)
    assert list(pipeline.filters) == ["demo_tech"]
    assert pipeline.roots == [tmp_path, BUNDLED_ROOT]


def test_filters_list_shows_both_roots(tmp_path: Path) -> None:
    import typer

    from scoring import cli

    app = typer.Typer()
    cli.register(app)
    _newer_demo(tmp_path)
    result = CliRunner().invoke(app, ["filters", "list"], env={"FLUXSCORE_FILTERS_PATH": str(tmp_path),
                                                              "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "1.1.0" in result.output and "demo_tech" in result.output and "1.0.0" in result.output


def test_hot_reload_resolves_in_the_worker_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.metrics import StreamMetrics
    from streams.reload import Reloader

    settings = ScoringSettings.from_env({"FLUXSCORE_FILTERS_PATH": str(tmp_path), "FLUXSCORE_DEVICE": "cpu"})
    pipeline = Pipeline.load("demo", settings=settings, students=False, commerce=False)
    # The worker's roots, not the environment, decide what a reload can see.
    monkeypatch.delenv("FLUXSCORE_FILTERS_PATH", raising=False)
    reloader = Reloader(pipeline, ("demo",), StreamMetrics())
    assert reloader.changed() == []
    _newer_demo(tmp_path)
    assert reloader.changed() == [], "a new hash is loaded only once it is seen twice"
    (package,) = reloader.changed()
    assert package.version == "1.1.0"


def test_the_shadow_role_resolves_in_the_same_roots(tmp_path: Path) -> None:
    from streams.settings import StreamSettings
    from streams.shadow import load_pipelines

    _newer_demo(tmp_path, "2.0.0")
    scoring = ScoringSettings.from_env({"FLUXSCORE_FILTERS_PATH": str(tmp_path), "FLUXSCORE_DEVICE": "cpu"})
    stream = StreamSettings.from_env({"FLUXSCORE_FILTERS": "demo@1.0.0", "FLUXSCORE_SHADOW_FILTERS": "demo@2.0.0"})
    live, shadow = load_pipelines(stream, scoring)
    assert live.filters["demo"].package.version == "1.0.0"
    assert shadow.filters["demo"].package.version == "2.0.0"


def test_training_commands_resolve_in_the_same_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.cli import _package

    _newer_demo(tmp_path)
    monkeypatch.setenv("FLUXSCORE_FILTERS_PATH", str(tmp_path))
    assert _package("demo").version == "1.1.0"
    assert _package("demo_tech").version == "1.0.0"
