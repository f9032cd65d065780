"""Build the bundled demo packages from synthetic data, offline, on a CPU: ``fluxscore train demo``.

For each demo filter (``demo``: 4 dimensions, ``demo_tech``: 3) this runs the same steps a real filter
goes through — prepare, probe, a small LoRA student on the MiniLM base, calibration, threshold, export —
on articles from :mod:`training.synth`; it also fits the universal commerce classifier on the synthetic
commerce and news items, and writes the sample articles ``make demo`` scores. Everything is seeded, so
the same command rebuilds the same packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring.package import BUNDLED_ROOT, load_package
from training.steps import (
    ProgressFn,
    Workspace,
    _quiet,
    default_cache_dir,
    run_calibrate,
    run_export,
    run_prepare,
    run_probe,
    run_student,
    run_threshold,
)
from training.synth import SynthConfig, generate, strip_labels, write_jsonl

DEMO_FILTERS = ("demo", "demo_tech")
DEMO_VERSION = "1.0.0"
SAMPLE_PATH = Path(__file__).resolve().parent.parent / "scoring" / "data" / "sample_articles.jsonl"
FRACTIONS = (0.6, 0.1, 0.15, 0.15)
# Sized so both students train in a few minutes on two CPU cores; the probe uses all training rows.
STUDENT_RECIPE: dict[str, Any] = {"epochs": 2, "batch_size": 16, "lr": 1e-3, "head_lr": 3e-3, "lora_r": 8,
                                  "lora_alpha": 16}
STUDENT_MAX_TRAIN = 320


@dataclass
class DemoResult:
    packages: dict[str, dict[str, Any]] = field(default_factory=dict)
    commerce: dict[str, Any] | None = None
    sample_path: Path | None = None
    data_path: Path | None = None


def build_demo(out_root: Path = BUNDLED_ROOT, *, n_articles: int = 1600, seed: int = 0,
               work_root: Path = Path("out/demo-build"), cache_dir: Path | None = None,
               filters: Sequence[str] = DEMO_FILTERS, student: bool = True, commerce: bool = True,
               sample_path: Path | None = SAMPLE_PATH, n_sample: int = 240, device: str = "cpu",
               student_max_train: int = STUDENT_MAX_TRAIN, probe_folds: int = 5, probe_max_epochs: int = 400,
               progress: ProgressFn = _quiet) -> DemoResult:
    """Train and export the demo packages under ``out_root/<name>/1.0.0`` (their filter.yaml and
    prompt.md must be there already: they are the demo's definition, the rest is built here)."""
    result = DemoResult()
    cache = cache_dir or default_cache_dir()
    records = generate(SynthConfig(n=n_articles, seed=seed))
    data_path = work_root / "synthetic-labelled.jsonl"
    write_jsonl(records, data_path)
    result.data_path = data_path
    for name in filters:
        package = load_package(out_root / name / DEMO_VERSION)
        work = Workspace(work_root / name, cache_dir=cache)
        run_prepare(data_path, package, work, fractions=FRACTIONS, seed=seed)
        probe = run_probe(package, work, device=device, folds=probe_folds, progress=progress, seed=seed,
                          max_epochs=probe_max_epochs)
        info: dict[str, Any] = {"probe_validation_mae": probe.validation_mae,
                                "mean_baseline_mae": probe.mean_baseline_mae}
        if student and package.config.stage2 is not None:
            outcome = run_student(package, work, device=device, max_train=student_max_train, seed=seed,
                                  progress=progress, **STUDENT_RECIPE)
            info["student_validation_mae"] = outcome.validation_mae
            info["student_seconds"] = round(outcome.seconds, 1)
            package = load_package(package.path)
        calibration = run_calibrate(package, work, device=device, progress=progress, seed=seed)
        info["test_mae"] = calibration.test_mae
        choice = run_threshold(load_package(package.path), work, device=device, progress=progress, seed=seed)
        info["threshold"] = choice.summary()
        exported = run_export(package.path, work, None)
        info["package_hash"] = exported.package_hash
        result.packages[name] = info
    if commerce:
        result.commerce = fit_demo_commerce(records, out_root / "commerce" / "v1", Workspace(
            work_root / "commerce", cache_dir=cache), device=device, seed=seed, progress=progress)
    if sample_path is not None:
        sample = [strip_labels(r) for r in generate(SynthConfig(n=n_sample, seed=seed + 1,
                                                                near_duplicate_fraction=0.02))]
        write_jsonl(sample, sample_path)
        result.sample_path = sample_path
    return result


def fit_demo_commerce(records: list[dict[str, Any]], detector_dir: Path, work: Workspace, *, device: str = "cpu",
                      seed: int = 0, progress: ProgressFn = _quiet) -> dict[str, Any]:
    """Fit the universal commerce classifier on the recipe's synthetic part: the demo's commerce and news
    items plus :func:`training.synth.generate_commerce_set` (guides, deal roundups, coupons, sponsored posts,
    price-quoting news). The bundled classifier is also trained on real labelled articles, which the demo
    does not have: ``python -m training.commerce --data FILE.jsonl`` retrains it that way afterwards."""
    from scoring.commerce import load_config as load_commerce_config
    from training.commerce import RECIPE_C, SYNTH_SET_ROWS, fit_commerce, synthetic_corpus
    from training.export import write_commerce_manifest

    originals = [r for r in records if r["truth"]["near_duplicate_of"] is None]
    config = load_commerce_config(detector_dir)
    # The cut commerce.yaml names, which the pipeline encodes for the detector (the demo filters use the
    # same one, so serving shares their embedding); the commerce set with the demo's seed.
    corpus = synthetic_corpus(config, seed=seed, demo_rows=0, set_rows=SYNTH_SET_ROWS, device=device,
                              cache_dir=work.cache_dir, demo_records=originals)
    metrics = fit_commerce(corpus.articles, corpus.labels.astype(bool).tolist(), corpus.embeddings, detector_dir,
                           C=RECIPE_C, seed=seed, training_data=corpus.describe())
    # Serving verifies the detector's files against this manifest: write it for the classifier just fitted.
    write_commerce_manifest(detector_dir)
    return metrics
