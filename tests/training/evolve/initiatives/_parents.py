"""A trained parent package for the feedback and sweep initiatives' tests: the real MiniLM probe and a
LoRA student on the tiny random Gemma base, trained on a few synthetic articles in a few seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scoring.package import FilterPackage, load_package
from training.evolve.base import Context
from training.evolve.ledger import Ledger
from training.export import default_prompt, scaffold_config, write_scaffold
from training.steps import Workspace, run_calibrate, run_export, run_prepare, run_probe, run_student, run_threshold
from training.synth import SynthConfig, generate, write_jsonl

DIMS = ["wellbeing", "evidence", "reach", "durability"]
FRACTIONS = (0.6, 0.1, 0.15, 0.15)


def synth_records(n: int, seed: int) -> list[dict[str, Any]]:
    return generate(SynthConfig(n=n, seed=seed, languages=("en",), language_weights=None,
                                near_duplicate_fraction=0.0, commerce_fraction=0.0))


def build_parent(root: Path, *, base: Path | None, n: int = 48, seed: int = 0) -> tuple[FilterPackage, Path]:
    """(the exported parent ``demo@1.0.0`` under ``root/filters``, the labelled data it was trained on).

    With ``base`` the package has a student on it; without, it is probe-only."""
    data = root / "data.jsonl"
    write_jsonl(synth_records(n, seed), data)
    body = scaffold_config("demo", DIMS, head_tokens=48, tail_tokens=16,
                           student_base=str(base) if base is not None else None, student_max_length=64)
    pkg = write_scaffold(root / "filters" / "demo" / "1.0.0", body, default_prompt(body))
    ws = Workspace(root / "parent-work", cache_dir=root / "cache")
    run_prepare(data, pkg, ws, fractions=FRACTIONS, seed=seed)
    run_probe(pkg, ws, folds=0, max_epochs=40, hidden=(16,))
    if base is not None:
        run_student(load_package(pkg.path), ws, seed=seed, epochs=1, batch_size=8, lora_r=4, lora_alpha=8)
    run_calibrate(load_package(pkg.path), ws, seed=seed)
    run_threshold(load_package(pkg.path), ws, seed=seed, gate_student=base is not None,
                  keep_student_routing=True)
    exported = run_export(pkg.path, ws, None, keep_student_routing=True)
    return exported.package, data


def context(root: Path, package: FilterPackage, data: Path, kind: str, params: dict[str, Any], *,
            allocation: float = 100.0, heldout: frozenset[str] = frozenset(), labels_db: str | None = None,
            work: str = "work", ledger: Ledger | None = None) -> Context:
    """A Context with a real Ledger/Meter ($3.60 per device-hour: a cent per 10 s)."""
    ledger = ledger or Ledger(root / "ledger.jsonl")
    meter = ledger.meter(kind, allocation=allocation, price_per_hour=3.6, device="cpu")
    (root / work).mkdir(parents=True, exist_ok=True)
    return Context(initiative=kind, kind=kind, package=package, train_data=data, heldout_ids=heldout,
                   work=root / work, meter=meter, params=params, cache_dir=root / "cache", labels_db=labels_db)


def shared_parent(base_temp: Path, base: Path | None) -> tuple[FilterPackage, Path]:
    """:func:`build_parent` once per test session (the feedback and sweep tests read the same parent; no
    test writes into it: every initiative copies it)."""
    root = base_temp / ("h4c-parent-student" if base is not None else "h4c-parent-probe")
    done = root / "built"
    if not done.exists():
        if root.exists():
            import shutil

            shutil.rmtree(root)
        root.mkdir(parents=True)
        package, _ = build_parent(root, base=base)
        done.write_text(str(package.path))
    return load_package(Path(done.read_text())), root / "data.jsonl"
