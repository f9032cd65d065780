"""``python -m bench``: its options are parsed before any benchmark runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_suite(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every benchmark module the command would import and run."""
    imported: list[str] = []

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        imported.append(name)
        raise AssertionError(f"{name} was imported: a benchmark would have run")

    monkeypatch.setattr(bench_main.importlib, "import_module", refuse)
    return imported


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_runs_nothing(flag: str, no_suite: list[str], capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_main.main([flag])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m bench" in out and "--quality-data" in out
    assert "core|stream|quality|gpu" in out, "the suites are named"
    assert no_suite == []


def test_an_unknown_option_is_refused_before_anything_runs(no_suite: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_main.main(["--qualitydata", "x.jsonl"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --qualitydata" in capsys.readouterr().err
    assert no_suite == []


def test_a_suite_name_hands_its_arguments_to_that_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str]]] = []

    class Suite:
        def __init__(self, name: str) -> None:
            self.name = name

        def main(self, argv: list[str]) -> list[Any]:
            seen.append((self.name, argv))
            return []

    monkeypatch.setattr(bench_main.importlib, "import_module", Suite)
    assert bench_main.main(["core", "--help"]) == 0
    assert seen == [("bench.core", ["--help"])]


def test_help_from_the_command_line_returns_at_once() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bench")
    assert time.monotonic() - started < 30, "help, not a benchmark run"
