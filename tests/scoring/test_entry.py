"""``fluxscore``: every installed package's commands, found through the ``fluxscore.commands`` entry points."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from scoring import entry

ALL_COMMANDS = {"score", "filters", "settings", "worker", "produce", "consume", "demo", "replay", "topics", "annotate",
                "train", "labels", "drift", "evolve"}


def test_the_full_command_set_is_registered() -> None:
    app, missing = entry.build_app()
    assert missing == []
    assert set(typer.main.get_group(app).commands) == ALL_COMMANDS
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert all(f" {name} " in result.output for name in ALL_COMMANDS), result.output
    assert "Not installed here" not in result.output


class _Metadata(dict[str, Any]):
    get_all = dict.get


class _Entry:
    """What ``entry_points`` yields, for a part that imports and one that does not."""

    def __init__(self, name: str, error: str | None = None, extras: list[str] | None = None) -> None:
        self.name, self.error = name, error
        self.dist = SimpleNamespace(metadata=_Metadata({"Provides-Extra": extras or []}))

    def load(self) -> Any:
        if self.error:
            raise ModuleNotFoundError(self.error)
        from scoring.cli import register

        return register


def test_a_part_that_cannot_be_imported_is_left_out_and_named(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    parts = [_Entry("train", "No module named 'matplotlib'", ["stream", "train"]), _Entry("score")]
    monkeypatch.setattr(entry, "entry_points", lambda group: parts)
    app, missing = entry.build_app()
    assert [m.name for m in missing] == ["train"]
    assert entry.unavailable(app, missing, ["score", "--help"]) is None, "the installed commands still run"
    assert entry.unavailable(app, missing, ["--help"]) is None
    with pytest.raises(SystemExit) as info:
        entry.main(["train", "build", "--help"])
    assert info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == ("fluxscore train: the 'train' extras are not installed (No module named 'matplotlib'); "
                    "pip install 'fluxscore[train]'")


def test_a_command_of_an_unknown_missing_part_names_every_missing_part(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [_Entry("score"), _Entry("stream", "No module named 'faust'", ["stream"])]
    monkeypatch.setattr(entry, "entry_points", lambda group: parts)
    app, missing = entry.build_app()
    line = entry.unavailable(app, missing, ["worker", "--role", "all"])
    assert line == ("fluxscore worker: the 'stream' extras are not installed (No module named 'faust'); "
                    "pip install 'fluxscore[stream]'")
    shown = " ".join(CliRunner().invoke(app, ["--help"]).output.split())  # rich wraps the epilog
    assert "Not installed here: the 'stream' extras" in shown


def test_a_core_part_that_cannot_be_imported_is_a_broken_installation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry, "entry_points", lambda group: [_Entry("score", "No module named 'torch'")])
    app, missing = entry.build_app()
    assert entry.unavailable(app, missing, ["score"]) == (
        "fluxscore score: the 'score' commands cannot be loaded (No module named 'torch'); reinstall fluxscore")


def _without(modules: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter where these imports fail, as in an image installed without their extras.
    code = (f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
            f"from scoring.entry import main\nmain({list(args)!r})")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_stream_image_without_the_training_extras() -> None:
    train = _without(["matplotlib"], "train", "--help")
    assert train.returncode == 1
    assert train.stderr.strip().splitlines() == [
        "fluxscore train: the 'train' extras are not installed (import of matplotlib halted; None in sys.modules); "
        "pip install 'fluxscore[train]'"]
    listing = _without(["matplotlib"], "--help")
    assert listing.returncode == 0, listing.stderr
    shown = " ".join(listing.stdout.split())
    assert " worker " in shown and " score " in shown and "Not installed here: the 'train' extras" in shown


def test_nothing_registered_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry, "entry_points", lambda group: [])
    app, missing = entry.build_app()
    assert entry.unavailable(app, missing, []) == (
        "fluxscore: the 'all' commands cannot be loaded (no fluxscore.commands entry points: fluxscore is not "
        "installed); reinstall fluxscore")

