"""A candidate package: a copy of the round's parent under the initiative's work directory, with its own
version, trained in place by the ``training.steps`` functions."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from scoring.package import CONFIG_NAME, FilterPackage, load_config, load_package
from training.dataset import DEFAULT_FRACTIONS
from training.evolve.base import Context
from training.evolve.exceptions import EvolveError
from training.steps import (
    ProgressFn,
    Workspace,
    default_cache_dir,
    run_calibrate,
    run_export,
    run_prepare,
    run_probe,
    run_threshold,
)
from training.student import StudentRecipe


def candidate_version(parent: FilterPackage, suffix: str) -> str:
    """``<parent version>-<suffix>``: distinct from the parent and sorted after it by :func:`scoring.package`."""
    return f"{parent.version}-{suffix}"


def new_candidate(ctx: Context, suffix: str) -> FilterPackage:
    """Copy the parent to ``ctx.work/package/<name>/<version>`` (replacing an earlier copy: a rerun rebuilds
    the candidate from the parent and its own checkpoints, never from a half-trained copy)."""
    parent = ctx.package
    version = candidate_version(parent, suffix)
    dest = ctx.work / "package" / parent.name / version
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(parent.path, dest, ignore=shutil.ignore_patterns("__pycache__", "*.tmp"))
    set_config_value(dest, None, "version", version)
    return load_package(dest)


def workspace(ctx: Context, name: str = "workspace") -> Workspace:
    return Workspace(ctx.work / name, cache_dir=ctx.cache_dir or default_cache_dir())


_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<value>[^#\n]*?)(?P<rest>\s*(#.*)?)$")


def set_config_value(package_dir: Path, section: str | None, key: str, value: str | int | float) -> None:
    """Set a scalar ``key`` (top level, or under the mapping ``section``) in filter.yaml, leaving every other
    line, comments included, as it was; added at the end of the section when absent. The result must
    validate before it replaces the file."""
    path = Path(package_dir) / CONFIG_NAME
    lines = path.read_text(encoding="utf-8").split("\n")
    text_value = f"{value:g}" if isinstance(value, float) else str(value)
    inside = section is None
    section_end: int | None = None
    indent = "" if section is None else "  "
    done = False
    for i, line in enumerate(lines):
        top_level = bool(line) and not line[0].isspace() and not line.startswith("#")
        if section is not None:
            if top_level and re.match(rf"^{re.escape(section)}:\s*(#.*)?$", line):
                inside, section_end = True, i + 1
                continue
            if inside and top_level:
                break
        if not inside:
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        if section is not None:
            section_end = i + 1
            indent = match["indent"] or indent
        if match["key"] == key and (section is None) == (match["indent"] == ""):
            lines[i] = f"{match['indent']}{key}: {text_value}{match['rest']}"
            done = True
            break
    if not done:
        if section is not None and section_end is None:
            raise EvolveError(f"{path} has no {section}: section to set {key} in")
        at = len(lines) if section_end is None else section_end
        lines.insert(at, f"{indent}{key}: {text_value}")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    try:
        load_config(tmp)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


# -- what every candidate-building initiative shares (augment, curriculum, distill) ---------------

# Set from the package's cut, never from a plan: the student must see what serving gives it.
_CUT_FIELDS = frozenset({"head_tokens", "tail_tokens", "max_length"})


class CandidateParams(BaseModel):
    """Parameters of how a candidate package is trained, common to augment, curriculum and distill."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fractions: tuple[float, float, float, float] = Field(
        DEFAULT_FRACTIONS, description="train, validation, calibration, test shares of ctx.train_data")
    probe_folds: int = Field(5, ge=1, description="cross-fitted probe members (1: one probe on the train split)")
    probe: dict[str, Any] = Field(default_factory=dict, description=(
        "probe recipe fields (training.probe.ProbeRecipe: hidden, max_epochs, lr...)"))
    max_train: int | None = Field(None, ge=1, description="student training rows at most")
    student: dict[str, Any] = Field(default_factory=dict, description=(
        "student recipe fields (training.student.StudentRecipe: epochs, lr, lora_r, batch_size...)"))

    @field_validator("probe")
    @classmethod
    def _probe_recipe(cls, value: dict[str, Any]) -> dict[str, Any]:
        from training.probe import ProbeRecipe

        unknown = sorted(set(value) - set(ProbeRecipe.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown probe recipe fields {unknown}")
        return value

    @field_validator("student")
    @classmethod
    def _recipe(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(StudentRecipe.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown student recipe fields {unknown}")
        cut = sorted(set(value) & _CUT_FIELDS)
        if cut:
            raise ValueError(f"{cut} come from the package's preprocessing and stage2.max_length, not the plan")
        return value


def _slug(initiative: str) -> str:
    """The initiative's name made version-safe: the candidate's version is ``<parent version>-<slug>``."""
    return re.sub(r"[^0-9A-Za-z._-]+", "-", initiative).strip("-._") or "candidate"


@dataclass
class Candidate:
    package: FilterPackage
    work: Workspace


def start_candidate(ctx: Context) -> Candidate:
    """A fresh copy of the parent under ``ctx.work/package/<name>/<new version>`` (a rerun starts it over;
    what is worth keeping lives in ``ctx.checkpoints``), and an empty workspace for it."""
    package = new_candidate(ctx, _slug(ctx.initiative))
    (package.path / "export.json").unlink(missing_ok=True)  # the parent's manifest: export writes the candidate's
    if not package.config.calibration:
        set_config_value(package.path, None, "calibration", "calibration.json")
        package = load_package(package.path)
    work = workspace(ctx)
    if work.root.exists():
        shutil.rmtree(work.root)  # splits, reports and predictions of an earlier try describe other models
    return Candidate(package=package, work=work)


def metered(ctx: Context) -> ProgressFn:
    """A training-steps progress callback that passes reports on and stops the job once the meter is spent."""
    def progress(description: str, completed: int, total: int | None) -> None:
        ctx.progress(description, completed, total)
        ctx.meter.check(description)
    return progress


def prepare_candidate(ctx: Context, candidate: Candidate, params: CandidateParams) -> None:
    run_prepare(ctx.train_data, candidate.package, candidate.work, fractions=params.fractions, seed=ctx.seed)


def _probe_digest(ctx: Context, candidate: Candidate, params: CandidateParams, folds: int) -> str:
    """What a trained probe depends on: the splits it saw, its input cut, its recipe, folds and seed."""
    cfg = candidate.package.config
    digest = hashlib.sha256()
    for name in ("train", "validation", "calibration"):
        digest.update((candidate.work.splits / f"{name}.jsonl").read_bytes())
    digest.update(orjson.dumps({"stage1": cfg.stage1.model_dump(exclude={"threshold"}),
                                "preprocessing": cfg.preprocessing.model_dump(), "recipe": params.probe,
                                "folds": folds, "seed": ctx.seed}, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def train_probe(ctx: Context, candidate: Candidate, params: CandidateParams, *, folds: int | None = None) -> None:
    """Train the candidate's probe, or take the one an earlier try trained on exactly these splits and
    settings from ``checkpoints/probe/`` (a rerun after a stop pays for it once)."""
    from training.steps import oof_path

    folds = params.probe_folds if folds is None else folds
    cfg = candidate.package.config
    files = [cfg.stage1.probe, cfg.stage1.probe_meta]
    saved = ctx.checkpoints / "probe"
    digest = _probe_digest(ctx, candidate, params, folds)
    oof = oof_path(candidate.work)
    if (saved / "digest").is_file() and (saved / "digest").read_text() == digest:
        for rel in files:
            shutil.copy2(saved / Path(rel).name, candidate.package.file(rel))
        if (saved / oof.name).is_file():
            oof.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(saved / oof.name, oof)
        candidate.package = load_package(candidate.package.path)
        return
    run_probe(candidate.package, candidate.work, device=ctx.device, folds=folds, progress=metered(ctx),
              seed=ctx.seed, **params.probe)
    candidate.package = load_package(candidate.package.path)
    if saved.exists():
        shutil.rmtree(saved)
    saved.mkdir(parents=True)
    for rel in files:
        shutil.copy2(candidate.package.file(rel), saved / Path(rel).name)
    if oof.is_file():
        shutil.copy2(oof, saved / oof.name)
    (saved / "digest").write_text(digest)  # last: the checkpoint counts once every file is there


def finish_candidate(ctx: Context, candidate: Candidate) -> dict[str, Any]:
    """Calibrate, choose the threshold and export (manifest written) the candidate; returns figures for notes."""
    progress = metered(ctx)
    package = load_package(candidate.package.path)
    cal = run_calibrate(package, candidate.work, device=ctx.device, progress=progress, seed=ctx.seed)
    # As `fluxscore train build` does: the student gets only the articles where it beats the probe on the
    # calibration split (all stay on stage 1 when it does not), so a candidate never routes to a worse student.
    choice = run_threshold(load_package(package.path), candidate.work, device=ctx.device, progress=progress,
                           seed=ctx.seed, gate_student=package.has_stage2)
    exported = run_export(package.path, candidate.work, None)
    candidate.package = exported.package
    routing = choice.routing
    return {"version": exported.package.version, "package_hash": exported.package_hash,
            "threshold": choice.threshold, "test_mae": cal.test_mae,
            "student_routing": routing.decision if routing is not None else None}


def mean_mae(per_dim: dict[str, float]) -> float:
    return float(np.mean(list(per_dim.values()))) if per_dim else float("nan")
