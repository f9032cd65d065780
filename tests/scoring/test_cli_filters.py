"""``fluxscore filters list``: every package with its verification status, and no traceback for bad ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from scoring.cli import register
from scoring.package import BUNDLED_ROOT


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _column(root: Path, name: str) -> dict[str, str]:
    """Each package's cell of one column of ``fluxscore filters list`` over the filters under ``root``."""
    result = CliRunner().invoke(_app(), ["filters", "list"],
                                env={"FLUXSCORE_FILTERS_PATH": str(root), "COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "package_hash" in line)
    column = [c.strip() for c in header.split("┃")].index(name)
    rows = [line.split("│") for line in result.output.splitlines() if line.count("│") > 5]
    return {row[1].strip(): row[column].strip() for row in rows}


def test_list_reports_tampered_unverified_and_escaping_packages(tmp_path: Path) -> None:
    root = tmp_path / "filters"
    tampered = root / "demo" / "1.0.0"
    shutil.copytree(BUNDLED_ROOT / "demo" / "1.0.0", tampered)
    data = bytearray((tampered / "probe.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "probe.safetensors").write_bytes(bytes(data))
    shutil.copytree(BUNDLED_ROOT / "demo_tech" / "1.0.0", root / "demo_tech" / "1.0.0",
                    ignore=shutil.ignore_patterns("export.json"))
    escaping = root / "escape" / "1.0.0"
    shutil.copytree(BUNDLED_ROOT / "demo" / "1.0.0", escaping)
    config = yaml.safe_load((escaping / "filter.yaml").read_text())
    config |= {"name": "escape", "oracle_prompt": str(tmp_path / "prompt.md")}
    (escaping / "filter.yaml").write_text(yaml.safe_dump(config))

    result = CliRunner().invoke(_app(), ["filters", "list"],
                                env={"FLUXSCORE_FILTERS_PATH": str(root), "COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert result.exception is None
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert "TAMPERED: probe.safetensors" in rows["demo"]
    assert "unverified" in rows["demo_tech"]
    assert "invalid" in rows["escape"] and "absolute path" in rows["escape"]
    assert " - " in rows["uplifting"]  # untrained: nothing to verify
    shutil.rmtree(tampered)
    shutil.rmtree(root / "demo_tech")
    result = CliRunner().invoke(_app(), ["filters", "list"], env={"FLUXSCORE_FILTERS_PATH": str(root),
                                                                  "COLUMNS": "400"})
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert "│ ok " in rows["demo"] and "│ ok " in rows["demo_tech"]  # the bundled ones


def test_list_says_whether_each_package_blocks_commerce(tmp_path: Path) -> None:
    root = tmp_path / "filters"
    shutil.copytree(BUNDLED_ROOT / "demo" / "1.0.0", root / "demo" / "1.0.0")
    passing = root / "demo_tech" / "1.0.0"
    shutil.copytree(BUNDLED_ROOT / "demo_tech" / "1.0.0", passing)
    config = yaml.safe_load((passing / "filter.yaml").read_text())
    config["prefilter"]["block_commerce"] = False
    (passing / "filter.yaml").write_text(yaml.safe_dump(config))

    cells = _column(root, "commerce")
    assert (cells["demo"], cells["demo_tech"]) == ("blocks", "passes")


def test_list_says_when_a_package_never_escalates_to_its_student(tmp_path: Path) -> None:
    root = tmp_path / "filters"
    shutil.copytree(BUNDLED_ROOT / "demo" / "1.0.0", root / "demo" / "1.0.0")
    gated = root / "demo_tech" / "1.0.0"
    shutil.copytree(BUNDLED_ROOT / "demo_tech" / "1.0.0", gated)
    config = yaml.safe_load((gated / "filter.yaml").read_text())
    config["stage1"]["threshold"] = 10.0  # what `train threshold` writes for a student that did not earn it
    (gated / "filter.yaml").write_text(yaml.safe_dump(config))

    cells = _column(root, "stage 2")
    assert (cells["demo"], cells["demo_tech"]) == ("yes", "no (stage 1 final)")
