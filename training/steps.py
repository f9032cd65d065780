"""The work of each ``fluxscore train`` command, without the command line.

A *workspace* directory holds what training produces besides the package: the splits
(``splits/``), reports (``reports/<step>.md`` + PNGs) and cached stage-2 predictions. Model files go
into the package directory, at the paths its filter.yaml names, so after the last step the package is
complete and ``export`` only has to check and copy it. Embeddings are cached on disk, keyed by model
and text hash, and shared between filters and runs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scoring.calibration import Calibration, Stage
from scoring.package import FilterConfig, FilterPackage, escalation_mask, load_package
from training import calibrate as calib
from training import threshold as thr
from training.dataset import SPLITS, LabelledSet, Prepared, load_split, prepare, write_prepared
from training.exceptions import TrainingError
from training.report import Report, calibration_curves, loss_curves, predicted_vs_oracle, threshold_sweep
from training.settings import TrainingSettings

# (description, completed, total) -> None; total None for an unknown amount of work.
ProgressFn = Callable[[str, int, int | None], None]


def _quiet(description: str, completed: int, total: int | None) -> None:
    return None


def default_cache_dir() -> Path:
    return TrainingSettings.from_env().cache_dir / "embeddings"


@dataclass(frozen=True)
class Workspace:
    root: Path
    cache_dir: Path = field(default_factory=default_cache_dir)

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def split(self, name: str, config: FilterConfig) -> LabelledSet:
        return load_split(self.splits, name, config)


def _mae(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.abs(np.asarray(pred) - np.asarray(target)).mean()) if len(target) else float("nan")


# -- prepare -------------------------------------------------------------------------------------

def run_prepare(data: Path, package: FilterPackage, work: Workspace, *, fractions: Sequence[float],
                by_time: bool = False, seed: int = 0, sources: dict[str, int] | None = None) -> Prepared:
    prepared = prepare(data, package.config, fractions=fractions, by_time=by_time, seed=seed)
    write_prepared(prepared, work.splits)
    m = prepared.manifest
    report = Report(work.reports, "prepare", f"prepare — {package.ref}")
    report.text(f"Source `{data}` (sha256 {m['source_sha256']}), read {m['read']} records, {m['usable']} usable, "
                f"{m['kept']} kept after de-duplication. Label layouts: {m['layouts']}. "
                f"Split {'by time within each tier' if by_time else 'at random within each tier'} (seed {seed}).")
    if sources is not None:
        report.heading("Label sources")
        report.text("One label per article; a person's label wins over the oracle's for the same article.")
        report.kv({f"{name} labels": sources.get(name, 0) for name in ("oracle", "human")})
    report.heading("Splits")
    report.table(["split", "articles", "LOW", "MEDIUM", "HIGH"],
                 [[name, s["count"], s["tiers"].get("LOW", 0), s["tiers"].get("MEDIUM", 0),
                   s["tiers"].get("HIGH", 0)] for name, s in m["splits"].items()])
    d = m["dedup"]
    report.heading("De-duplication")
    report.kv({"repeated ids dropped": len(d["duplicate_ids"]), "identical texts dropped": len(d["identical_texts"]),
               "near-duplicate groups (kept together)": d["near_duplicate_groups"],
               "articles in those groups": d["near_duplicate_members"]})
    if m["skipped"]:
        report.heading("Skipped records")
        report.table(["id", "reason"], [[s["id"], s["reason"]] for s in m["skipped"][:50]])
        if len(m["skipped"]) > 50:
            report.text(f"… and {len(m['skipped']) - 50} more (all listed in splits/manifest.json).")
    report.write()
    return prepared


# -- embeddings and stage-1 predictions -----------------------------------------------------------

def embed(package: FilterPackage, texts: Sequence[str], work: Workspace, *, device: str = "cpu",
          progress: ProgressFn = _quiet, chunk: int = 256) -> np.ndarray:
    """Stage-1 embeddings of ``texts`` as the pipeline makes them, through the on-disk cache."""
    from scoring.embcache import DiskEmbeddingStore
    from scoring.embedding import EmbeddingKey, load_embedder
    from scoring.embedding import embed as stage1_embed

    cfg = package.config
    key = EmbeddingKey.of(cfg)  # the one definition of the encoder input, shared with serving
    embedder = load_embedder(key.model, device)
    cache = DiskEmbeddingStore(work.cache_dir)
    parts = []
    label = f"embedding ({cfg.stage1.embedding_model})"
    progress(label, 0, len(texts))
    for start in range(0, len(texts), chunk):
        parts.append(stage1_embed(embedder, key, texts[start:start + chunk], store=cache))
        progress(label, min(start + chunk, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)


def probe_predict(package: FilterPackage, texts: Sequence[str], work: Workspace, *, device: str = "cpu",
                  progress: ProgressFn = _quiet) -> np.ndarray:
    from scoring.probe import Probe

    cfg = package.config
    probe = Probe.load(package.file(cfg.stage1.probe), package.file(cfg.stage1.probe_meta))
    return probe.predict(embed(package, texts, work, device=device, progress=progress))


# -- probe ---------------------------------------------------------------------------------------

@dataclass
class ProbeOutcome:
    history: dict[str, Any]
    validation_mae: dict[str, float]
    mean_baseline_mae: dict[str, float]
    oof_mae: float | None = None


def _pool(work: Workspace, config: FilterConfig) -> LabelledSet:
    """Train + calibration rows: what a cross-fitted probe trains on and predicts out of fold."""
    train, cal = work.split("train", config), work.split("calibration", config)
    pool = train.subset(range(len(train)))
    pool.records += cal.records
    pool.texts += cal.texts
    pool.targets = np.concatenate([train.targets, cal.targets])
    return pool


def oof_path(work: Workspace) -> Path:
    return work.predictions / "stage1-oof.json"


def load_oof(package: FilterPackage, work: Workspace) -> tuple[LabelledSet, np.ndarray] | None:
    """The cross-fitted probe's out-of-fold predictions, when they belong to the package's probe."""
    path = oof_path(work)
    if not path.is_file():
        return None
    body = orjson.loads(path.read_bytes())
    if body.get("probe_hash") != package.model_hashes.get("probe"):
        return None
    pool = _pool(work, package.config)
    if pool.ids != body["ids"]:
        return None
    return pool, np.asarray(body["pred"], dtype=np.float64)


def run_probe(package: FilterPackage, work: Workspace, *, device: str = "cpu", folds: int = 5,
              progress: ProgressFn = _quiet, **recipe: Any) -> ProbeOutcome:
    """Train the probe. With ``folds`` >= 2 (the default) it is cross-fitted on train + calibration
    rows: ``folds`` members each leave one fold out, their out-of-fold predictions are kept for
    calibration and the threshold, and the package gets their average as one probe."""
    from training.crossfit import crossfit_probe
    from training.dataset import near_duplicate_groups
    from training.probe import train_probe

    cfg = package.config
    train, val = work.split("train", cfg), work.split("validation", cfg)
    if len(train) < 5 or len(val) < 2:
        raise TrainingError(f"too little data to train a probe: {len(train)} train, {len(val)} validation rows",
                            filter=package.ref, step="probe")
    x_val = embed(package, val.texts, work, device=device, progress=progress)
    max_epochs = int(recipe.get("max_epochs", 400))
    oof_mae: float | None = None
    if folds >= 2:
        pool = _pool(work, cfg)
        x_pool = embed(package, pool.texts, work, device=device, progress=progress)
        progress("probe members", 0, folds)
        probe, oof, histories = crossfit_probe(
            x_pool, pool.targets, cfg.dimension_names, cfg.stage1.embedding_model, folds=folds,
            groups=near_duplicate_groups(pool.texts), val_embeddings=x_val, val_targets=val.targets,
            progress=lambda done, total: progress("probe members", done, total), **recipe)
        history = histories[0]
        oof_mae = float(np.abs(np.clip(oof, 0, 10) - pool.targets).mean())
        n_train = len(pool)
    else:
        x_train = embed(package, train.texts, work, device=device, progress=progress)

        def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
            progress(f"probe (val MAE {metrics['val_mae']:.3f})", epoch, total)

        progress("probe", 0, max_epochs)
        probe, history = train_probe(x_train, train.targets, cfg.dimension_names, cfg.stage1.embedding_model,
                                     val_embeddings=x_val, val_targets=val.targets, progress=on_epoch, **recipe)
        n_train = len(train)
    probe.save(package.file(cfg.stage1.probe), package.file(cfg.stage1.probe_meta))
    oof_path(work).unlink(missing_ok=True)
    if folds >= 2:
        saved = load_package(package.path)
        oof_path(work).parent.mkdir(parents=True, exist_ok=True)
        oof_path(work).write_bytes(orjson.dumps({"probe_hash": saved.model_hashes.get("probe"), "ids": pool.ids,
                                                  "pred": oof.tolist()}))
    train_mean = (pool if folds >= 2 else train).targets.mean(axis=0)
    pred = probe.predict(x_val)
    val_mae = calib.mae_per_dim(pred, val.targets, cfg.dimension_names)
    mean_mae = calib.mae_per_dim(np.broadcast_to(train_mean, val.targets.shape), val.targets, cfg.dimension_names)
    report = Report(work.reports, "probe", f"probe — {package.ref}")
    how = (f"cross-fitted: {folds} members, each trained on train + calibration rows less one fold and stopped "
           f"early on the validation split, averaged into one MLP {probe.hidden}; out-of-fold MAE "
           f"{oof_mae:.3f} (kept for calibration and the threshold)" if folds >= 2 else
           f"MLP {history['recipe']['hidden']}, stopped after {history['epochs_run']} epochs, best epoch "
           f"{history['best_epoch']} restored")
    report.text(f"Probe on `{cfg.stage1.embedding_model}` embeddings (head {cfg.preprocessing.head_tokens} + tail "
                f"{cfg.preprocessing.tail_tokens} tokens), {n_train} training / {len(val)} validation articles; "
                f"{how}. Saved to `{cfg.stage1.probe}` + `{cfg.stage1.probe_meta}`.")
    report.table(["dimension", "validation MAE", "predict-the-mean MAE"],
                 [[d, val_mae[d], mean_mae[d]] for d in cfg.dimension_names]
                 + [["**all**", float(np.mean(list(val_mae.values()))), float(np.mean(list(mean_mae.values())))]])
    report.figure("loss", loss_curves(history, "probe" if folds < 2 else "probe (first member)"), "loss curves")
    report.figure("validation", predicted_vs_oracle(pred, val.targets, cfg.dimension_names, "validation split"),
                  "predicted vs oracle (validation)")
    report.write()
    return ProbeOutcome(history=history, validation_mae=val_mae, mean_baseline_mae=mean_mae, oof_mae=oof_mae)


# -- student -------------------------------------------------------------------------------------

def tier_weights(data: LabelledSet, config: FilterConfig) -> np.ndarray:
    """Inverse tier frequency, mean 1: MEDIUM and HIGH articles are rare and matter most."""
    tiers = [t.value for t in data.tiers(config)]
    counts = {t: tiers.count(t) for t in set(tiers)}
    w = np.asarray([len(tiers) / (len(counts) * counts[t]) for t in tiers], dtype=np.float64)
    return w / w.mean()


def _adapter_key(package: FilterPackage) -> str:
    return package.model_hashes.get("adapter", "none")


def student_predict(package: FilterPackage, texts: Sequence[str], work: Workspace, split: str, *,
                    device: str = "cpu", progress: ProgressFn = _quiet) -> np.ndarray:
    """Stage-2 predictions through the serving code (StudentPool), cached per adapter hash and split."""
    from scoring.student import StudentPool

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    path = work.predictions / f"stage2-{package.name}-{_adapter_key(package)}-{split}-{key}.json"
    if path.is_file():
        return np.asarray(orjson.loads(path.read_bytes()), dtype=np.float64)
    pool = StudentPool(device=device, batch_size=16)
    pool.register(package)
    out = []
    label = f"student predictions ({split})"
    progress(label, 0, len(texts))
    for start in range(0, len(texts), 64):
        out.append(pool.predict(package.ref, texts[start:start + 64]))
        progress(label, min(start + 64, len(texts)), len(texts))
    pred = np.concatenate(out) if out else np.zeros((0, len(package.config.dimensions)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(pred.tolist()))
    return pred


def portable_adapter(adapter_dir: Path, base_model: str) -> None:
    """peft records the base's resolved local path; a package must name it as its config does, and
    carry no machine-specific files."""
    config_file = adapter_dir / "adapter_config.json"
    if config_file.is_file():
        body = orjson.loads(config_file.read_bytes())
        body["base_model_name_or_path"] = base_model
        config_file.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    (adapter_dir / "README.md").unlink(missing_ok=True)


@dataclass
class StudentOutcome:
    history: dict[str, Any]
    validation_mae: dict[str, float]
    seconds: float


def run_student(package: FilterPackage, work: Workspace, *, device: str = "cpu", weighting: str = "none",
                max_train: int | None = None, seed: int = 0, progress: ProgressFn = _quiet,
                **recipe: Any) -> StudentOutcome:
    from training.student import train_student

    cfg = package.config
    if cfg.stage2 is None:
        raise TrainingError(f"{package.ref} has no stage2 section; add one to train a student",
                            filter=package.ref, step="student")
    train, val = work.split("train", cfg), work.split("validation", cfg)
    if max_train is not None and len(train) > max_train:
        # A stratified-enough subset: the split is already shuffled within tiers, so every k-th row.
        rows = np.linspace(0, len(train) - 1, max_train).round().astype(int)
        train = train.subset(np.unique(rows))
    if weighting not in ("none", "tier"):
        raise TrainingError(f"unknown sample weighting {weighting!r} (none, tier)", step="student")
    weights = tier_weights(train, cfg) if weighting == "tier" else None

    def on_step(p: Any) -> None:
        if p.phase == "train":
            progress(f"student epoch {p.epoch}/{p.epochs}" + (f" (loss {p.loss:.3f})" if p.loss else ""),
                     p.step, p.steps)
        else:
            progress(f"student validation MAE {p.val_mae:.3f}", p.step, p.steps)

    started = time.monotonic()
    result = train_student(train.texts, train.targets, cfg.dimension_names, cfg.stage2.base_model,
                           package.file(cfg.stage2.adapter), sample_weights=weights, val_texts=val.texts,
                           val_targets=val.targets, device=device, progress=on_step,
                           history_path=work.reports / "student_history.json",
                           head_tokens=cfg.preprocessing.head_tokens, tail_tokens=cfg.preprocessing.tail_tokens,
                           max_length=cfg.stage2.max_length, seed=seed, **recipe)
    seconds = time.monotonic() - started
    portable_adapter(package.file(cfg.stage2.adapter), cfg.stage2.base_model)
    package = load_package(package.path)  # the adapter changed: a new hash
    pred = student_predict(package, val.texts, work, "validation", device=device, progress=progress)
    val_mae = calib.mae_per_dim(pred, val.targets, cfg.dimension_names)
    hist = result.history
    curves = {"train_loss": [e.get("train_loss") for e in hist.get("epochs", [])],
              "val_mae": [e.get("val_mae") for e in hist.get("epochs", [])], "best_epoch": result.best_epoch}
    report = Report(work.reports, "student", f"student — {package.ref}")
    report.text(f"LoRA on `{cfg.stage2.base_model}`, {hist.get('n_train')} training / {hist.get('n_val')} "
                f"validation articles, {len(hist.get('epochs', []))} epochs on {device} in {seconds:.0f} s, "
                f"sample weighting: {weighting}. Checkpoint chosen on validation MAE: epoch {result.best_epoch}. "
                f"Adapter saved to `{cfg.stage2.adapter}/`.")
    report.table(["dimension", "validation MAE (served through StudentPool)"],
                 [[d, val_mae[d]] for d in cfg.dimension_names]
                 + [["**all**", float(np.mean(list(val_mae.values())))]])
    report.figure("loss", loss_curves(curves, "student"), "loss curves")
    report.figure("validation", predicted_vs_oracle(pred, val.targets, cfg.dimension_names, "validation split"),
                  "predicted vs oracle (validation)")
    report.write()
    return StudentOutcome(history=hist, validation_mae=val_mae, seconds=seconds)


# -- calibrate -----------------------------------------------------------------------------------

def _ids_digest(data: LabelledSet) -> str:
    return hashlib.sha256("\n".join(data.ids).encode()).hexdigest()[:16]


def run_calibrate(package: FilterPackage, work: Workspace, *, device: str = "cpu", stages: Sequence[str] = (),
                  progress: ProgressFn = _quiet, seed: int = 0) -> calib.CalibrationReport:
    cfg = package.config
    if not cfg.calibration:
        raise TrainingError(f"{package.ref} names no calibration file; add `calibration: calibration.json`",
                            filter=package.ref, step="calibrate")
    cal, test = work.split("calibration", cfg), work.split("test", cfg)
    all_stages: tuple[Stage, ...] = ("stage1", "stage2")
    wanted: list[Stage] = [s for s in all_stages if not stages or s in stages]
    if "stage2" in wanted and (cfg.stage2 is None or not package.file(cfg.stage2.adapter).is_dir()):
        wanted.remove("stage2")
    cal_preds: dict[Stage, np.ndarray] = {}
    test_preds: dict[Stage, np.ndarray] = {}
    cal_sets: dict[Stage, LabelledSet] = {}
    oof = load_oof(package, work)
    for stage in wanted:
        cal_sets[stage] = cal
        if stage == "stage1":
            if oof is not None:
                # A cross-fitted probe's out-of-fold predictions: more rows, none seen by their member.
                cal_sets[stage], cal_preds[stage] = oof
            else:
                cal_preds[stage] = probe_predict(package, cal.texts, work, device=device, progress=progress)
            test_preds[stage] = probe_predict(package, test.texts, work, device=device, progress=progress)
        else:
            cal_preds[stage] = student_predict(package, cal.texts, work, "calibration", device=device,
                                               progress=progress)
            test_preds[stage] = student_predict(package, test.texts, work, "test", device=device,
                                                progress=progress)
    path = package.file(cfg.calibration)
    existing = Calibration.load(path) if path.is_file() else None
    fitted_on = dict(existing.meta.get("fitted_on", {})) if existing else {}
    result: calib.CalibrationReport | None = None
    for stage in wanted:
        rows = cal_sets[stage]
        what = "out-of-fold (train + calibration)" if stage == "stage1" and oof is not None else "calibration"
        fitted_on[stage] = {"split": what, "n": len(rows), "ids_sha256": _ids_digest(rows)}
        step = calib.fit_calibration(cfg.dimension_names, {stage: cal_preds[stage]}, rows.targets,
                                     existing=result.calibration if result else existing,
                                     test_preds={stage: test_preds[stage]}, test_targets=test.targets,
                                     meta={"fitted_on": fitted_on}, seed=seed)
        if result is not None:
            step.fits = {**result.fits, **step.fits}
            step.test_mae = {**result.test_mae, **step.test_mae}
        result = step
    if result is None:
        raise TrainingError(f"{package.ref}: nothing to calibrate (no probe or student yet?)", filter=package.ref,
                            step="calibrate")
    # A routing decision (run_threshold) judged the maps it was made with; new maps need a new decision.
    result.calibration.meta.pop("routing", None)
    result.calibration.save(path)
    report = Report(work.reports, "calibrate", f"calibrate — {package.ref}")
    report.text("Isotonic maps fitted on held-out predictions: " + "; ".join(
        f"{stage} on {fitted_on[stage]['split']} ({fitted_on[stage]['n']} articles)" for stage in wanted)
        + ". The validation split, which chose the checkpoints, is not used. A dimension keeps its map only when "
        f"it lowers the MAE out of fold within those rows. Test split: {len(test)} articles.")
    for fit in result.fits.values():
        stage = fit.stage
        before, after = result.test_mae[stage]["before"], result.test_mae[stage]["after"]
        report.heading(f"{stage}")
        report.table(["dimension", "map kept", "cal. CV MAE raw", "cal. CV MAE isotonic", "test MAE before",
                      "test MAE after"],
                     [[d, "yes" if fit.kept[d] else "no (identity)", fit.calibration_cv_mae["raw"][d],
                       fit.calibration_cv_mae["isotonic"][d], before[d], after[d]] for d in cfg.dimension_names]
                     + [["**all**", "", "", "", float(np.mean(list(before.values()))),
                         float(np.mean(list(after.values())))]])
        report.figure(f"{stage}-curves", calibration_curves(cal_preds[stage], cal_sets[stage].targets,
                                                            cfg.dimension_names,
                                                            fit.maps, f"{stage}: calibration split"))
        report.figure(f"{stage}-test", predicted_vs_oracle(
            result.calibration.apply(stage, cfg.dimension_names, test_preds[stage]), test.targets,
            cfg.dimension_names, f"{stage} calibrated: test split"))
    report.write()
    return result


# -- threshold -----------------------------------------------------------------------------------

def holdout_calibrated(package: FilterPackage, data: LabelledSet, raw: np.ndarray, calibration: Calibration,
                       *, stage: Stage = "stage1", seed: int = 0) -> np.ndarray:
    """Calibrated scores of hold-out rows; maps fitted on these very rows are cross-fitted instead, so
    no row is calibrated by a map that saw its label."""
    cfg = package.config
    fitted = calibration.meta.get("fitted_on", {})
    fitted = fitted.get(stage, {}) if isinstance(fitted, dict) else {}
    same_rows = isinstance(fitted, dict) and fitted.get("ids_sha256") == _ids_digest(data)
    if same_rows and calibration.maps.get(stage):
        dims = [j for j, d in enumerate(cfg.dimension_names) if d in calibration.maps[stage]]
        return calib.crossfit(raw, data.targets, seed=seed, dims=dims)
    return calibration.apply(stage, cfg.dimension_names, raw)


def holdout_estimates(package: FilterPackage, data: LabelledSet, raw: np.ndarray, calibration: Calibration,
                      *, seed: int = 0) -> np.ndarray:
    """Stage-1 estimates for hold-out rows; maps fitted on these very rows are cross-fitted instead."""
    return thr.stage1_estimates(package.config, holdout_calibrated(package, data, raw, calibration, seed=seed))


def measure_cost_ratio(package: FilterPackage, texts: Sequence[str], work: Workspace, *,
                       device: str = "cpu") -> float | None:
    """Stage-1 (embed + probe) over stage-2 seconds per article, timed here on ``texts``."""
    from scoring.embedding import EmbeddingKey, load_embedder
    from scoring.embedding import embed as stage1_embed
    from scoring.probe import Probe
    from scoring.student import StudentPool

    cfg = package.config
    if cfg.stage2 is None or not package.file(cfg.stage2.adapter).is_dir() or not texts:
        return None
    key = EmbeddingKey.of(cfg)
    sample = list(texts[:64])  # article texts: the student reads them as they are, the encoder with its prefix
    embedder = load_embedder(cfg.stage1.embedding_model, device)
    probe = Probe.load(package.file(cfg.stage1.probe), package.file(cfg.stage1.probe_meta))
    pool = StudentPool(device=device, batch_size=16)
    pool.register(package)
    stage1_embed(embedder, key, sample[:4])
    pool.predict(package.ref, sample[:4])
    t0 = time.perf_counter()
    probe.predict(stage1_embed(embedder, key, sample))
    t1 = time.perf_counter()
    pool.predict(package.ref, sample)
    t2 = time.perf_counter()
    return (t1 - t0) / max(t2 - t1, 1e-9)


@dataclass
class HeldOut:
    """Both stages' calibrated scores on the calibration split, none calibrated by a map (or predicted by a
    probe member) that saw the row's label, and the served (in-sample maps) scores on the test split."""

    calibration: LabelledSet
    probe: np.ndarray
    student: np.ndarray | None
    estimates: np.ndarray
    test: LabelledSet
    test_probe: np.ndarray
    test_student: np.ndarray | None
    test_estimates: np.ndarray


def held_out_scores(package: FilterPackage, work: Workspace, calibration: Calibration, *, device: str = "cpu",
                    progress: ProgressFn = _quiet, seed: int = 0) -> HeldOut:
    cfg = package.config
    cal, test = work.split("calibration", cfg), work.split("test", cfg)
    oof = load_oof(package, work)
    if oof is not None:
        # The cross-fitted probe: its out-of-fold predictions, calibrated out of fold over the same pool as
        # the threshold sees them, then the calibration split's rows of it.
        pool, pool_raw = oof
        pool_cal = holdout_calibrated(package, pool, pool_raw, calibration, seed=seed)
        index = {rid: i for i, rid in enumerate(pool.ids)}
        probe_cal = pool_cal[[index[rid] for rid in cal.ids]]
    else:
        probe_cal = holdout_calibrated(package, cal, probe_predict(package, cal.texts, work, device=device,
                                                                   progress=progress), calibration, seed=seed)
    student_cal = test_student = None
    if cfg.stage2 is not None and package.file(cfg.stage2.adapter).is_dir():
        raw = student_predict(package, cal.texts, work, "calibration", device=device, progress=progress)
        student_cal = holdout_calibrated(package, cal, raw, calibration, stage="stage2", seed=seed)
        test_student = calibration.apply("stage2", cfg.dimension_names, student_predict(
            package, test.texts, work, "test", device=device, progress=progress))
    test_probe = calibration.apply("stage1", cfg.dimension_names,
                                   probe_predict(package, test.texts, work, device=device, progress=progress))
    return HeldOut(calibration=cal, probe=probe_cal, student=student_cal,
                   estimates=thr.stage1_estimates(cfg, probe_cal), test=test, test_probe=test_probe,
                   test_student=test_student, test_estimates=thr.stage1_estimates(cfg, test_probe))


def student_routing(package: FilterPackage, held: HeldOut, fn_threshold: float, *,
                    keep: bool = False) -> thr.Routing | None:
    """Compare student and probe on the calibration split and decide the routing (None: no student)."""
    cfg = package.config
    if held.student is None or held.test_student is None or not len(held.calibration):
        return None
    routing = thr.gate_student(cfg, held.estimates, held.probe, held.student, held.calibration.targets,
                               fn_threshold, keep=keep)
    for split, est, probe, student, target in (
            ("calibration", held.estimates, held.probe, held.student, held.calibration.targets),
            ("test", held.test_estimates, held.test_probe, held.test_student, held.test.targets)):
        routing.figures[split] = {
            "fn_threshold": thr.routed_errors(cfg, est, fn_threshold, probe, student, target),
            "threshold": thr.routed_errors(cfg, est, routing.threshold, probe, student, target)}
    return routing


def _rethreshold(choice: thr.ThresholdChoice, estimates: np.ndarray, positive: np.ndarray,
                 test_estimates: np.ndarray, test_positive: np.ndarray, threshold: float) -> thr.ThresholdChoice:
    holdout = thr.evaluate(estimates, positive, threshold)
    test = thr.evaluate(test_estimates, test_positive, threshold)
    return replace(choice, threshold=threshold, holdout=holdout, test=test,
                   speedup_holdout=thr.expected_speedup(holdout["skip_rate"], choice.cost_ratio),
                   speedup_test=thr.expected_speedup(test["skip_rate"], choice.cost_ratio))


def _routing_report(report: Report, routing: thr.Routing, dims: Sequence[str]) -> None:
    decision = {"student": "escalate above the false-negative threshold (the student earns it)",
                "raised": "threshold raised to where the student helps",
                "stage1": f"stage 1 final for all (threshold {thr.STAGE1_FINAL:g}, the top of the score range)",
                "kept": "the student is not better, but its routing was kept on request"}[routing.decision]
    report.heading("Student gating")
    report.text(f"**Decision: {decision}.** Why: {routing.reason}. Both stages calibrated "
                "out of fold on the calibration split (the probe's scores are its out-of-fold predictions when it "
                "was cross-fitted), so neither is judged on rows it or its maps trained on. The decision is "
                "recorded in the package (calibration.json, `routing`).")
    report.table(["calibration split", "probe", "student"],
                 [[d, routing.probe_dims[d], routing.student_dims[d]] for d in dims]
                 + [["**mean over dimensions**", routing.probe["mae"], routing.student["mae"]],
                    ["**weighted average**", routing.probe["wavg_mae"], routing.student["wavg_mae"]]])
    rows = []
    for split, at in routing.figures.items():
        for which, label in (("fn_threshold", f"false-negative rule ({routing.fn_threshold:g})"),
                             ("threshold", f"chosen ({routing.threshold:g})")):
            f = at[which]
            rows.append([split, label, int(f["n"]), f["escalated_share"], f["probe_mae"], f["student_mae"],
                         f["routed_mae"], f["routed_wavg_mae"]])
    report.table(["split", "threshold", "articles", "escalated", "probe MAE", "student MAE", "cascade MAE",
                  "cascade weighted-average MAE"], rows)


def run_threshold(package: FilterPackage, work: Workspace, *, target: float = thr.DEFAULT_TARGET,
                  method: str = "smoothed", holdout: Sequence[str] = ("calibration",),
                  cost_ratio: float | None = None, measure_cost: bool = False, device: str = "cpu",
                  write: bool = True, progress: ProgressFn = _quiet, seed: int = 0,
                  gate_student: bool = False, keep_student_routing: bool = False) -> thr.ThresholdChoice:
    """Choose (and with ``write`` set) stage1.threshold. With ``gate_student`` and a trained student, the
    student is compared with the probe on the calibration split first and the threshold adjusted so that
    only articles where it helps go to it (stage 1 final for all when it does not help at all; with
    ``keep_student_routing`` the false-negative threshold stands); the decision goes into the report and,
    when written, into calibration.json (``routing``), where export checks it."""
    cfg = package.config
    unknown = [h for h in holdout if h not in SPLITS or h == "train"]
    if unknown or not holdout:
        raise TrainingError(f"hold-out splits must be among validation, calibration, test (not train): {unknown}",
                            step="threshold")
    calibration = Calibration.load(package.file(cfg.calibration)) if cfg.calibration and \
        package.file(cfg.calibration).is_file() else Calibration()
    estimates, positive, weighted = [], [], []
    oof = load_oof(package, work) if tuple(holdout) == ("calibration",) else None
    sources: list[tuple[LabelledSet, np.ndarray | None]] = (
        [(oof[0], oof[1])] if oof is not None else [(work.split(name, cfg), None) for name in holdout])
    used = "out-of-fold predictions on train + calibration" if oof is not None else " + ".join(holdout)
    for data, known in sources:
        raw = known if known is not None else probe_predict(package, data.texts, work, device=device,
                                                            progress=progress)
        estimates.append(holdout_estimates(package, data, raw, calibration, seed=seed))
        positive.append(thr.oracle_positive(cfg, data.targets))
        weighted.append(data.weighted(cfg))
    test = work.split("test", cfg)
    test_raw = probe_predict(package, test.texts, work, device=device, progress=progress)
    test_est = thr.stage1_estimates(cfg, calibration.apply("stage1", cfg.dimension_names, test_raw))
    measured = None
    if measure_cost:
        measured = measure_cost_ratio(package, test.texts, work, device=device)
    ratio = cost_ratio if cost_ratio is not None else (measured if measured is not None else thr.DEFAULT_COST_RATIO)
    choice = thr.choose(np.concatenate(estimates), np.concatenate(positive), target=target, method=method,
                        oracle_weighted=np.concatenate(weighted), medium=cfg.tiers.medium,
                        test_estimates=test_est, test_positive=thr.oracle_positive(cfg, test.targets),
                        cost_ratio=ratio)
    routing = None
    if gate_student:
        held = held_out_scores(package, work, calibration, device=device, progress=progress, seed=seed)
        routing = student_routing(package, held, choice.threshold, keep=keep_student_routing)
        if routing is not None:
            if routing.threshold != choice.threshold:
                choice = _rethreshold(choice, np.concatenate(estimates), np.concatenate(positive), test_est,
                                      thr.oracle_positive(cfg, test.targets), routing.threshold)
                choice.note = ((choice.note + " ") if choice.note else "") + (
                    f"Threshold {routing.threshold:g} instead of the false-negative rule's {routing.fn_threshold:g} "
                    "(student gating, below): the MEDIUM+ articles it keeps on stage 1 count as false negatives "
                    "here, but the student would have scored them worse than the probe does.")
            choice.routing = routing
    if write:
        thr.write_threshold(package.path, choice.threshold)
        if cfg.calibration and package.file(cfg.calibration).is_file():
            # Recorded in the package (so hashed into provenance), with the adapter it judged: export refuses
            # a package whose threshold routes to a student this record found worse, or one retrained since.
            meta = {k: v for k, v in calibration.meta.items() if k != "routing"}
            if routing is not None:
                meta["routing"] = {**{k: v for k, v in routing.to_dict().items() if k != "figures"},
                                   "adapter": package.model_hashes.get("adapter")}
            Calibration(maps=calibration.maps, meta=meta).save(package.file(cfg.calibration))
    report = Report(work.reports, "threshold", f"threshold — {package.ref}")
    report.text(f"Escalation threshold chosen on {used} (articles the probe never "
                f"trained on), rule `{method}`, target false-negative rate {target:.1%} (oracle MEDIUM+ articles "
                f"kept on stage 1). " + (f"Written to `filter.yaml` as stage1.threshold = {choice.threshold:g}."
                                         if write else "Not written (dry run)."))
    if choice.note:
        report.text(f"**Note:** {choice.note}")
    rows = [["hold-out (chosen on)", choice.holdout["n"], choice.holdout["positives"], choice.holdout["skip_rate"],
             choice.holdout["false_negatives"], choice.holdout["fn_rate"], choice.speedup_holdout]]
    if choice.test:
        rows.append(["test (never seen)", choice.test["n"], choice.test["positives"], choice.test["skip_rate"],
                     choice.test["false_negatives"], choice.test["fn_rate"], choice.speedup_test])
    report.table(["data", "articles", "MEDIUM+", "skip rate", "false negatives", "FN rate", "expected speed-up"],
                 rows)
    report.text(f"Expected speed-up = 1 / (cost ratio + 1 − skip rate) against sending every article to stage 2, "
                f"with cost ratio (stage-1 / stage-2 time per article) = {ratio:.3f} "
                + ("(measured here on this device)." if cost_ratio is None and measured is not None
                   else "(given)." if cost_ratio is not None else "(default: MiniLM probe vs Gemma-3-1B on a GPU)."))
    if routing is not None:
        _routing_report(report, routing, cfg.dimension_names)
    report.figure("sweep", threshold_sweep(choice.sweep, choice.threshold, target, "hold-out sweep"), "sweep")
    report.write()
    return choice


# -- normalisation -------------------------------------------------------------------------------

PERCENTILES = tuple(range(1, 101))


@dataclass
class NormalizationOutcome:
    path: Path
    reference: tuple[float, ...]
    # split -> "oracle" / "weighted average" / "normalized" -> tier -> share
    tier_shares: dict[str, dict[str, dict[str, float]]]


def _routed(package: FilterPackage, estimates: np.ndarray, probe: np.ndarray, student: np.ndarray | None) -> np.ndarray:
    """The calibrated scores the package serves: the student's where the estimate reaches the threshold."""
    if student is None or not package.has_stage2:
        return probe
    return np.where(escalation_mask(package.config.stage1.threshold, estimates)[:, None], student, probe)


def _shares(tiers: Sequence[Any]) -> dict[str, float]:
    values = [str(getattr(t, "value", t)) for t in tiers]
    return {t: (values.count(t) / len(values) if values else float("nan")) for t in ("LOW", "MEDIUM", "HIGH")}


def run_normalize(package: FilterPackage, work: Workspace, *, device: str = "cpu", progress: ProgressFn = _quiet,
                  seed: int = 0) -> NormalizationOutcome:
    """Fit the percentile normalisation the package's filter.yaml names (``normalization:``) on the
    calibration split: the percentiles 1-100 of the weighted averages the package gives those articles as
    it routes them (both stages calibrated out of fold, as for new articles). Scoring then reports each
    record's percentile (``normalized``). The report shows the tier shares before (the weighted average's
    tiers, what records carry) and after (the same tier boundaries read on the normalised scale, 0-100 / 10),
    on the calibration split and the test split."""
    from scoring.aggregate import PercentileNormalizer, aggregate, tier_of

    cfg = package.config
    if not cfg.normalization:
        raise TrainingError(f"{package.ref} names no normalization file; add `normalization: normalization.json` "
                            "to its filter.yaml (or pass --normalize to `train build`)", filter=package.ref,
                            step="normalize")
    calibration = Calibration.load(package.file(cfg.calibration)) if cfg.calibration and \
        package.file(cfg.calibration).is_file() else Calibration()
    held = held_out_scores(package, work, calibration, device=device, progress=progress, seed=seed)
    if len(held.calibration) < 2:
        raise TrainingError(f"{package.ref}: {len(held.calibration)} calibration articles cannot give percentiles",
                            filter=package.ref, step="normalize")
    cal_scores = _routed(package, held.estimates, held.probe, held.student)
    cal_wavg = np.asarray([aggregate(cfg, row).weighted_average for row in cal_scores])
    reference = tuple(round(float(v), 4) for v in np.percentile(cal_wavg, PERCENTILES))
    path = package.file(cfg.normalization)
    path.parent.mkdir(parents=True, exist_ok=True)
    # PercentileNormalizer reads "method" and "reference"; the rest says where the reference came from.
    path.write_bytes(orjson.dumps({
        "method": "percentile", "reference": list(reference), "percentiles": [PERCENTILES[0], PERCENTILES[-1]],
        "fitted_on": {"split": "calibration", "n": len(held.calibration),
                      "ids_sha256": _ids_digest(held.calibration),
                      "scores": "weighted average as routed (stage1.threshold "
                                f"{cfg.stage1.threshold:g}), both stages calibrated out of fold"}},
        option=orjson.OPT_INDENT_2))
    normalizer = PercentileNormalizer.load(path)  # what serving will read, checked now
    test_scores = _routed(package, held.test_estimates, held.test_probe, held.test_student)
    shares: dict[str, dict[str, dict[str, float]]] = {}
    for split, data, scores in (("calibration", held.calibration, cal_scores), ("test", held.test, test_scores)):
        wavg = [aggregate(cfg, row).weighted_average for row in scores]
        shares[split] = {"oracle": _shares(data.tiers(cfg)),
                         "weighted average": _shares([tier_of(cfg, w) for w in wavg]),
                         "normalized": _shares([tier_of(cfg, normalizer(w) / 10.0) for w in wavg])}
    report = Report(work.reports, "normalize", f"normalize — {package.ref}")
    report.text(f"Percentile normalisation written to `{cfg.normalization}` (method `percentile`): percentiles "
                f"{PERCENTILES[0]}-{PERCENTILES[-1]} of the weighted averages of the {len(held.calibration)} "
                "calibration articles as the package routes them, both stages calibrated out of fold. A record's "
                "`normalized.value` is the share (0-100) of those articles scoring at or below it.")
    report.text(f"Tier shares before (tiers of the weighted average, what records carry) and after normalisation "
                f"(the same boundaries, MEDIUM {cfg.tiers.medium:g} and HIGH {cfg.tiers.high:g}, read on the "
                "normalised value / 10); the oracle's tiers for comparison. On the calibration split the normalised "
                "shares follow from the percentiles by construction; the test split shows how they hold on new "
                "articles.")
    report.table(["split", "tiers of", "LOW", "MEDIUM", "HIGH"],
                 [[split, what, by[what]["LOW"], by[what]["MEDIUM"], by[what]["HIGH"]]
                  for split, by in shares.items() for what in ("oracle", "weighted average", "normalized")])
    report.write()
    return NormalizationOutcome(path=path, reference=reference, tier_shares=shares)


# -- export --------------------------------------------------------------------------------------

def run_export(package_dir: Path, work: Workspace | None, dest_root: Path | None, *,
               overwrite: bool = False, keep_student_routing: bool = False) -> Any:
    from training.export import export_package

    # The drift reference profile comes from the calibration split: data the probe never trained on,
    # scored by the package itself (a retrain refreshes it; without a workspace the old one stays).
    calibration = work.splits / "calibration.jsonl" if work is not None else None
    exported = export_package(package_dir, dest_root, overwrite=overwrite,
                              reference=calibration if calibration is not None and calibration.is_file() else None,
                              keep_student_routing=keep_student_routing)
    if work is not None:
        report = Report(work.reports, "export", f"export — {exported.package.ref}")
        report.kv({"path": str(exported.package.path), "package_hash": exported.package_hash,
                   **{f"model hash: {k}": v for k, v in exported.model_hashes.items()}})
        report.write()
    return exported
