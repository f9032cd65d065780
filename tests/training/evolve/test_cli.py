"""``fluxscore evolve plan|run``: the table and schedule of a valid plan, the problems of an invalid one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from tests.training.evolve.conftest import write_plan
from training.evolve.cli import app
from training.synth import SynthConfig, generate, write_jsonl

EXAMPLE = Path(__file__).resolve().parents[3] / "training" / "evolve" / "examples" / "round.yaml"
runner = CliRunner()


def _example(tmp_path: Path, **changes: Any) -> Path:
    """The shipped example with its data file made here (the example names one under out/)."""
    body = yaml.safe_load(EXAMPLE.read_text())
    write_jsonl(generate(SynthConfig(n=30, seed=7, commerce_fraction=0.0)), tmp_path / "labelled.jsonl")
    body["data"] = [str(tmp_path / "labelled.jsonl")]
    body.update(changes)
    return write_plan(tmp_path / "round.yaml", body)


def test_plan_prints_table_and_schedule(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(_example(tmp_path))], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "round example-cpu: budget $0.40" in out
    assert "probe-sweep" in out and "demo@1.0.0" in out and "25%" in out
    assert "allocated $0.40 of $0.40 (100%); devices: cpu ×2 at $0.10/h" in out
    assert "step 1 (wave 0) — side by side: probe-sweep (cpu#0), augment-tiers (cpu#1)" in out
    assert "step 2 (wave 1) — side by side: long-context (cpu#0), distill-from-sweep (cpu#1)" in out


def test_invalid_plan_lists_every_problem(tmp_path: Path) -> None:
    body = yaml.safe_load(_example(tmp_path).read_text())
    body["initiatives"][0]["hours"] = 100.0                        # $0.10 ≠ 100 h × $0.10/h
    body["initiatives"][1]["depends_on"] = ["distill-from-sweep"]
    body["initiatives"][3]["depends_on"] = ["augment-tiers"]        # a cycle
    body["initiatives"][2]["params"] = {"buckets": [64], "colour": "red"}
    body["budget"] = 0.3
    plan = write_plan(tmp_path / "bad.yaml", body)
    result = runner.invoke(app, ["plan", str(plan)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{plan}: invalid plan (4 problems):"
    assert "  allocations exceed the budget: $0.10 + $0.10 + $0.10 + $0.10 = $0.40 > $0.30" in lines
    assert ("  initiative 'probe-sweep': allocation and hours do not multiply out: $0.10 ≠ 100 h × $0.10/h = "
            "$10.00") in lines
    assert "  initiative 'long-context': params.colour: Extra inputs are not permitted" in lines
    assert "  dependency cycle: augment-tiers → distill-from-sweep → augment-tiers" in lines


def test_run_refuses_an_existing_round_without_resume(tmp_path: Path) -> None:
    plan = _example(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "ledger.jsonl").write_text("")
    result = runner.invoke(app, ["run", str(plan), "--work", str(work)])
    assert result.exit_code == 1
    assert "already holds a round (ledger.jsonl): pass --resume" in result.stderr


def test_entry_point_registers_evolve() -> None:
    fluxscore = Path(__file__).resolve().parents[3] / ".venv" / "bin" / "fluxscore"
    done = subprocess.run([str(fluxscore), "evolve", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "plan" in done.stdout and "run" in done.stdout
