"""A tiny probe-only parent package trained on synthetic articles, plan files, and a real initiative
(``reprobe``: retrains the parent's probe with another hidden size through ``training.steps``) that the
runner tests register themselves, so they do not depend on the initiatives of the other modules."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from scoring.package import load_package
from training.evolve.base import Context, Outcome
from training.export import default_prompt, scaffold_config, write_scaffold
from training.steps import Workspace, run_calibrate, run_export, run_prepare, run_probe, run_threshold
from training.synth import SynthConfig, generate, write_jsonl

DIMS = ["wellbeing", "evidence", "reach", "durability"]
FRACTIONS = (0.55, 0.15, 0.15, 0.15)


def train_probe_package(pkg_dir: Path, data: Path, work: Path, cache: Path, *, hidden: int, seed: int,
                        check: Any = None, max_epochs: int = 80) -> Path:
    """Prepare, probe (one MLP, no cross-fitting: fast), calibrate, threshold and export in place."""
    package = load_package(pkg_dir)
    ws = Workspace(work, cache_dir=cache)
    run_prepare(data, package, ws, fractions=FRACTIONS, seed=seed)

    def progress(description: str, done: int, total: int | None) -> None:
        if check is not None:
            check()

    run_probe(package, ws, folds=1, hidden=(hidden,), max_epochs=max_epochs, patience=15, seed=seed, progress=progress)
    run_calibrate(load_package(pkg_dir), ws, seed=seed, progress=progress)
    run_threshold(load_package(pkg_dir), ws, seed=seed, progress=progress)
    run_export(pkg_dir, None, None)  # no workspace: no drift reference profile (scaffolds name none), faster
    return pkg_dir


@pytest.fixture(scope="session")
def evolve_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 labelled synthetic articles (no commerce items: the prefilter would block them)."""
    path = tmp_path_factory.mktemp("evolve-data") / "labelled.jsonl"
    write_jsonl(generate(SynthConfig(n=200, seed=11, commerce_fraction=0.0)), path)
    return path


@pytest.fixture(scope="session")
def evolve_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evolve-cache")


@pytest.fixture(scope="session")
def parent_root(tmp_path_factory: pytest.TempPathFactory, evolve_data: Path, evolve_cache: Path) -> Path:
    """A filters root holding ``evo/1.0.0``: a probe-only package with a deliberately weak probe (hidden 4,
    two epochs: it has barely learnt, so that it was fitted on the held-out rows too does not flatter it)."""
    root = tmp_path_factory.mktemp("evolve-filters")
    body = scaffold_config("evo", DIMS, head_tokens=64, tail_tokens=16)
    pkg = write_scaffold(root / "evo" / "1.0.0", body, default_prompt(body))
    train_probe_package(pkg.path, evolve_data, tmp_path_factory.mktemp("evolve-parent-work"), evolve_cache,
                        hidden=4, seed=0, max_epochs=2)
    return root


class ReprobeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: int = Field(64, ge=1, description="hidden units of the new probe")


def reprobe(ctx: Context) -> Outcome:
    """A real initiative: the parent copied under a new version, its probe retrained on ctx.train_data."""
    params = ReprobeParams.model_validate(dict(ctx.params))
    version = f"{ctx.package.version}-reprobe{params.hidden}"
    dest = ctx.work / "package" / ctx.package.name / version
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ctx.package.path, dest)
    config = dest / "filter.yaml"
    body = yaml.safe_load(config.read_text())
    body["version"] = version
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    with ctx.meter.running("reprobe"):
        train_probe_package(dest, ctx.train_data, ctx.work / "ws", ctx.cache_dir or ctx.work / "cache",
                            hidden=params.hidden, seed=ctx.seed, check=ctx.meter.check)
    return Outcome(package_dir=dest, notes={"hidden": params.hidden})


def write_plan(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def base_plan(data: Path, parent: Path, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "round": "test-round", "currency": "USD", "budget": 10.0,
        "devices": {"cpu": {"count": 1, "price_per_hour": 36.0}},
        "heldout": {"fraction": 0.2, "seed": 0, "min_articles": 10},
        "data": [str(data)],
        "initiatives": [{"name": "wide-probe", "kind": "reprobe", "rank": 1, "filter": str(parent),
                         "allocation": 5.0, "device": "cpu", "metric": "mae", "expected_lift": 0.05,
                         "params": {"hidden": 64}}],
    }
    body.update(changes)
    return body
