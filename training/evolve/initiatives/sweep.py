"""Initiative ``sweep``: Bayesian hyper-parameter optimisation with Optuna, under the initiative's allocation.

What is swept depends on the package: with a stage-2 student, the student's learning rate, weight decay,
LoRA dropout, sequence length (``stage2.max_length``) and LoRA rank; on a probe-only package, the probe's
hidden sizes, learning rate, weight decay and dropout (:mod:`training.probe`). Every trial trains on the
train split of the round's data (``ctx.train_data``, held-out articles already removed) and is judged on
its validation split (mean absolute error over the dimensions, which Optuna minimises); the validation
MAE of each epoch is reported to Optuna so that a ``MedianPruner`` stops trials that trail the others.

**Budget.** A trial is one job in the ledger (``trial-<number>``: one charge per trial), and its device
seconds and cost are also kept as the trial's user attributes. No trial starts once the spend reaches
``1 - reserve`` of the allocation (the reserve pays for building the candidate), and inside a trial the
meter is checked at every training step, so a trial that runs into the allocation stops there
(:class:`~training.evolve.exceptions.BudgetExhausted`; the study keeps every finished trial).

**Resuming, several machines.** The study lives in ``params.storage`` (default a SQLite file under
``ctx.checkpoints``) under a stable name, so a rerun loads it and only runs the trials still missing from
``params.trials`` (finished = complete or pruned); a PostgreSQL URL lets several machines share one study.

**The candidate** takes the best trial's adapter (or probe) when this machine trained it, and otherwise
retrains the best trial's settings; then it is calibrated, gated and exported like any other build. The
notes hold the Pareto view of quality (validation MAE) against cost (device seconds): the trials no other
trial beats on both, as a table, and a PNG of every trial with that front (``ctx.work/pareto.png``).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scoring.package import FilterPackage, load_package
from training.evolve.base import Context, Outcome
from training.evolve.exceptions import BudgetExhausted, EvolveError
from training.evolve.initiatives._candidate import new_candidate, set_config_value, workspace
from training.steps import Workspace, run_calibrate, run_export, run_prepare, run_threshold

Range = tuple[float, float]


class Params(BaseModel):
    """The plan's ``params`` of a ``sweep`` initiative."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trials: int = Field(8, ge=1, description="the trial budget (finished trials of the study count)")
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite:///<checkpoints>/optuna.db; "
                                                  "postgresql+psycopg://… for a study shared by several machines")
    study_name: str | None = Field(None, description="default fluxscore-<initiative>-<filter>")
    target: Literal["auto", "student", "probe"] = Field("auto", description="auto: the student when the package "
                                                                           "has one, else the probe")
    reserve: float = Field(0.25, ge=0.0, lt=1.0, description="share of the allocation no trial starts into: it "
                                                             "pays for building the candidate")
    prune_startup: int = Field(2, ge=0, description="trials that run to the end before the pruner judges any")
    fractions: tuple[float, float, float, float] = Field(
        (0.6, 0.1, 0.15, 0.15), description="train, validation, calibration, test split of the round's data")
    # the student's space
    lr: Range = Field((1e-5, 1e-3), description="LoRA learning rate range (log scale)")
    weight_decay: Range = (0.0, 0.1)
    dropout: Range = Field((0.0, 0.2), description="LoRA dropout range")
    max_length: list[int] = Field([128, 256, 512], min_length=1, description="sequence lengths (tokens)")
    lora_r: list[int] = Field([4, 8, 16], min_length=1, description="LoRA ranks (alpha = 2 x rank)")
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    # the probe's space
    probe_hidden: list[list[int]] = Field([[64], [128], [256, 128]], min_length=1)
    probe_lr: Range = (1e-4, 3e-3)
    probe_weight_decay: Range = (0.0, 0.3)
    probe_dropout: Range = (0.0, 0.4)
    probe_max_epochs: int = Field(200, ge=1)
    probe_report_every: int = Field(5, ge=1, description="epochs between reports to the pruner")

    @model_validator(mode="after")
    def _check(self) -> Params:
        problems = [f"{name} range {lo:g}..{hi:g} is empty" for name, (lo, hi) in (
            ("lr", self.lr), ("weight_decay", self.weight_decay), ("dropout", self.dropout),
            ("probe_lr", self.probe_lr), ("probe_weight_decay", self.probe_weight_decay),
            ("probe_dropout", self.probe_dropout)) if lo > hi]
        problems += [f"{name} must be positive for a log scale" for name, (lo, _) in
                     (("lr", self.lr), ("probe_lr", self.probe_lr)) if lo <= 0]
        problems += [f"{name} must stay below 1" for name, (_, hi) in
                     (("dropout", self.dropout), ("probe_dropout", self.probe_dropout)) if hi >= 1]
        if any(v < 8 for v in self.max_length) or any(r < 1 for r in self.lora_r):
            problems.append("max_length values must be >= 8 and lora_r values >= 1")
        if any(not h or any(n < 1 for n in h) for h in self.probe_hidden):
            problems.append("probe_hidden entries must be non-empty lists of positive sizes")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            problems.append(f"fractions must sum to 1, got {sum(self.fractions):g}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# -- the Pareto view ---------------------------------------------------------------------------------

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised), by the first then
    the second coordinate. A point equal to another is kept: neither beats it.

    >>> pareto_front([(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (0.5, 9.0), (2.0, 2.0)])
    [3, 0, 1, 4]
    """
    front = []
    for i, (a, b) in enumerate(points):
        if not any((c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1], i))


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float | None
    device_seconds: float | None
    cost: float | None
    params: dict[str, Any]


def _rows(study: Any) -> list[TrialRow]:
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        out.append(TrialRow(t.number, t.state.name.lower(), value, t.user_attrs.get("device_seconds"),
                            t.user_attrs.get("cost"), dict(t.params)))
    return out


def pareto_table(rows: Sequence[TrialRow]) -> tuple[list[TrialRow], str]:
    """The complete trials on the front (MAE vs device seconds), and them as a markdown table."""
    done = [r for r in rows if r.state == "complete" and r.value is not None and r.device_seconds is not None]
    front = [done[i] for i in pareto_front([(float(r.device_seconds or 0.0), float(r.value or 0.0))
                                            for r in done])]
    lines = ["| trial | validation MAE | device seconds | cost | settings |", "|---|---|---|---|---|"]
    for r in front:
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r.params.items()))
        lines.append(f"| {r.number} | {r.value:.4f} | {r.device_seconds:.1f} | {r.cost or 0.0:.4g} | {settings} |")
    return front, "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def pareto_plot(rows: Sequence[TrialRow], front: Sequence[TrialRow], best: int | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker, colour in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:grey")):
        pts = [(r.device_seconds, r.value) for r in rows if r.state == state and r.value is not None
               and r.device_seconds is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour,
                       label=f"{state} ({len(pts)})")
    if front:
        ax.step([float(r.device_seconds or 0.0) for r in front], [float(r.value or 0.0) for r in front],
                where="post", color="tab:red", label="Pareto front")
    chosen = next((r for r in rows if r.number == best), None)
    if chosen is not None and chosen.device_seconds is not None and chosen.value is not None:
        ax.scatter([chosen.device_seconds], [chosen.value], s=140, facecolors="none", edgecolors="black",
                   label=f"best (trial {best})")
    ax.set_xlabel("device seconds")
    ax.set_ylabel("validation MAE")
    ax.set_title("sweep: quality against cost")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# -- trials ------------------------------------------------------------------------------------------

ReportFn = Callable[[int, float], None]   # (step, validation MAE) after each epoch (or every few, the probe)


@dataclass
class _Trainer:
    """Trains one setting of the searched space into a directory; shared by trials and the final retrain."""

    ctx: Context
    params: Params
    package: FilterPackage
    ws: Workspace
    target: str

    def __post_init__(self) -> None:
        cfg = self.package.config
        self.train, self.val = self.ws.split("train", cfg), self.ws.split("validation", cfg)
        self._embedded: tuple[np.ndarray, np.ndarray] | None = None

    def suggest(self, trial: Any) -> dict[str, Any]:
        p = self.params
        if self.target == "student":
            return {"lr": trial.suggest_float("lr", *p.lr, log=True),
                    "weight_decay": trial.suggest_float("weight_decay", *p.weight_decay),
                    "lora_dropout": trial.suggest_float("lora_dropout", *p.dropout),
                    "max_length": trial.suggest_categorical("max_length", p.max_length),
                    "lora_r": trial.suggest_categorical("lora_r", p.lora_r)}
        hidden = trial.suggest_categorical("hidden", ["-".join(map(str, h)) for h in p.probe_hidden])
        return {"hidden": hidden, "lr": trial.suggest_float("lr", *p.probe_lr, log=True),
                "weight_decay": trial.suggest_float("weight_decay", *p.probe_weight_decay),
                "dropout": trial.suggest_float("dropout", *p.probe_dropout)}

    def fit(self, settings: dict[str, Any], out: Path, report: ReportFn | None, label: str) -> float:
        """Train ``settings`` into ``out``; returns the validation MAE of what was kept (the best epoch)."""
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        return self._student(settings, out, report, label) if self.target == "student" else \
            self._probe(settings, out, report, label)

    def _student(self, settings: dict[str, Any], out: Path, report: ReportFn | None, label: str) -> float:
        from training.student import TrainProgress, train_student

        cfg = self.package.config
        assert cfg.stage2 is not None

        def on_step(p: TrainProgress) -> None:
            if p.phase == "train":
                self.ctx.progress(f"{label} epoch {p.epoch}/{p.epochs}", p.step, p.steps)
                self.ctx.meter.check(f"{label}, epoch {p.epoch} step {p.step}")
            elif report is not None and p.val_mae is not None:
                report(p.epoch, p.val_mae)

        result = train_student(self.train.texts, self.train.targets, cfg.dimension_names, cfg.stage2.base_model,
                               out / "adapter", val_texts=self.val.texts, val_targets=self.val.targets,
                               device=self.ctx.device, progress=on_step, history_path=out / "history.json",
                               head_tokens=cfg.preprocessing.head_tokens, tail_tokens=cfg.preprocessing.tail_tokens,
                               epochs=self.params.epochs, batch_size=self.params.batch_size, seed=self.ctx.seed,
                               lr=settings["lr"], weight_decay=settings["weight_decay"],
                               lora_dropout=settings["lora_dropout"], max_length=int(settings["max_length"]),
                               lora_r=int(settings["lora_r"]), lora_alpha=2 * int(settings["lora_r"]))
        return float(result.best_val_mae)

    def _probe(self, settings: dict[str, Any], out: Path, report: ReportFn | None, label: str) -> float:
        from training.probe import train_probe
        from training.steps import embed

        cfg = self.package.config
        if self._embedded is None:
            self._embedded = (embed(self.package, self.train.texts, self.ws, device=self.ctx.device),
                              embed(self.package, self.val.texts, self.ws, device=self.ctx.device))
        x_train, x_val = self._embedded
        every = self.params.probe_report_every

        def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
            self.ctx.progress(f"{label} epoch {epoch}/{total}", epoch, total)
            self.ctx.meter.check(f"{label}, probe epoch {epoch}")
            if report is not None and epoch % every == 0:
                report(epoch, metrics["val_mae"])

        hidden = tuple(int(n) for n in str(settings["hidden"]).split("-"))
        probe, history = train_probe(x_train, self.train.targets, cfg.dimension_names, cfg.stage1.embedding_model,
                                     val_embeddings=x_val, val_targets=self.val.targets, progress=on_epoch,
                                     hidden=hidden, lr=settings["lr"], weight_decay=settings["weight_decay"],
                                     dropout=settings["dropout"], max_epochs=self.params.probe_max_epochs,
                                     seed=self.ctx.seed)
        probe.save(out / "probe.safetensors", out / "probe.json")
        return float(history["best_val_mae"])

    def install(self, out: Path, settings: dict[str, Any]) -> None:
        """Put what ``fit`` left in ``out`` into the candidate package."""
        from training.steps import portable_adapter

        cfg = self.package.config
        if self.target == "student":
            assert cfg.stage2 is not None
            adapter = self.package.file(cfg.stage2.adapter)
            shutil.rmtree(adapter, ignore_errors=True)
            shutil.copytree(out / "adapter", adapter)
            portable_adapter(adapter, cfg.stage2.base_model)
            # Serving must cut inputs at the length the adapter was trained and chosen at.
            set_config_value(self.package.path, "stage2", "max_length", int(settings["max_length"]))
        else:
            shutil.copy2(out / "probe.safetensors", self.package.file(cfg.stage1.probe))
            shutil.copy2(out / "probe.json", self.package.file(cfg.stage1.probe_meta))


def _target(params: Params, package: FilterPackage) -> str:
    cfg = package.config
    has_student = cfg.stage2 is not None and package.file(cfg.stage2.adapter).is_dir()
    if params.target == "student" and cfg.stage2 is None:
        raise EvolveError(f"{package.ref} has no stage2 section: a student sweep needs one")
    if params.target == "auto":
        return "student" if has_student else "probe"
    return params.target


def _charged(ctx: Context, job: str) -> tuple[float, float] | None:
    """(device seconds, cost) the ledger holds for ``job``: a long trial is charged in parts."""
    entries = [e for e in ctx.meter.ledger.entries
               if e.get("kind") == "charge" and e.get("initiative") == ctx.meter.initiative and e.get("job") == job]
    if not entries:
        return None
    return sum(float(e["device_seconds"]) for e in entries), sum(float(e["cost"]) for e in entries)


def open_study(params: Params, ctx: Context) -> Any:
    import optuna

    storage = params.storage or f"sqlite:///{ctx.checkpoints / 'optuna.db'}"
    name = params.study_name or f"fluxscore-{ctx.initiative}-{ctx.package.name}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        pass  # a new study
    # Seeded, and moved on by the trials already run, so a resumed study does not replay its first suggestions.
    sampler = optuna.samplers.TPESampler(seed=ctx.seed + existing)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=params.prune_startup, n_warmup_steps=0)
    return optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run(ctx: Context) -> Outcome:
    import optuna

    params = Params.model_validate(dict(ctx.params))
    target = _target(params, ctx.package)
    with ctx.meter.running("sweep-prepare"):
        candidate = new_candidate(ctx, "sweep")
        ws = workspace(ctx)
        run_prepare(ctx.train_data, candidate, ws, fractions=params.fractions, seed=ctx.seed)
    trainer = _Trainer(ctx, params, candidate, ws, target)
    study = open_study(params, ctx)
    trials_root = ctx.work / "trials" / study.study_name
    soft_limit = ctx.meter.allocation * (1.0 - params.reserve)
    before = _finished(study)
    stopped: list[str] = []

    def spent_for_trials() -> bool:
        if ctx.meter.spent < soft_limit:
            return False
        stopped[:] = [f"no further trial: spent {ctx.meter.spent:.4g} of {ctx.meter.allocation:g}, the last "
                      f"{params.reserve:.0%} is kept for building the candidate"]
        return True

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if spent_for_trials():
            study.stop()

    def objective(trial: optuna.Trial) -> float:
        settings = trainer.suggest(trial)
        job = f"trial-{trial.number}"
        trial.set_user_attr("target", target)
        trial.set_user_attr("job", job)
        ctx.progress(f"sweep trial {trial.number}", _finished(study) - before, params.trials - before)

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation MAE {value:.4f} at step {step} trails the median")

        try:
            with ctx.meter.running(job):
                return trainer.fit(settings, trials_root / str(trial.number), report, f"sweep trial {trial.number}")
        finally:
            charged = _charged(ctx, job)
            if charged is not None:
                trial.set_user_attr("device_seconds", charged[0])
                trial.set_user_attr("cost", charged[1])

    remaining = params.trials - before
    if remaining > 0 and not spent_for_trials():
        # BudgetExhausted inside a trial (the allocation itself is spent) marks it failed and ends the run here.
        study.optimize(objective, n_trials=remaining, catch=(), callbacks=[after_trial])
    rows = _rows(study)
    done = [r for r in rows if r.state == "complete"]
    if not done:
        raise BudgetExhausted(f"initiative {ctx.initiative!r}: no trial finished within the allocation "
                              f"({stopped[0] if stopped else 'no trial ran'})")
    best = study.best_trial
    front, table = pareto_table(rows)
    plot = pareto_plot(rows, front, best.number, ctx.work / "pareto.png")
    best_settings = dict(best.params)
    with ctx.meter.running("sweep-finish"):
        saved = trials_root / str(best.number)
        reused = (saved / ("adapter" if target == "student" else "probe.json")).exists()
        if not reused:
            # Trained on another machine sharing the study (or its files were cleaned): train it again here.
            trainer.fit(best_settings, saved, None, f"sweep retrain of trial {best.number}")
        trainer.install(saved, best_settings)
        package = load_package(candidate.path)
        stages = ("stage2",) if target == "student" else ("stage1",)
        run_calibrate(package, ws, device=ctx.device, stages=stages, progress=ctx.progress, seed=ctx.seed)
        choice = run_threshold(load_package(candidate.path), ws, device=ctx.device, progress=ctx.progress,
                               seed=ctx.seed, gate_student=target == "student")
        exported = run_export(candidate.path, ws, None)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    notes: dict[str, Any] = {
        "target": target, "study": study.study_name, "storage": _safe(params.storage, ctx),
        "trials": counts, "trials_this_run": _finished(study) - before, "stopped": stopped[0] if stopped else None,
        "best": {"trial": best.number, "validation_mae": best.value, "settings": best_settings,
                 "device_seconds": best.user_attrs.get("device_seconds"), "reused": reused},
        "pareto": [{"trial": r.number, "validation_mae": r.value, "device_seconds": r.device_seconds,
                    "cost": r.cost, "settings": r.params} for r in front],
        "pareto_table": table, "pareto_plot": str(plot),
        "routing": choice.routing.decision if choice.routing is not None else None,
        "threshold": choice.threshold, "package_hash": exported.package_hash,
    }
    return Outcome(package_dir=exported.package.path, notes=notes,
                   metrics={"validation_mae": float(best.value if best.value is not None else math.nan),
                            "trials": float(len(done))})


def _safe(storage: str | None, ctx: Context) -> str:
    if storage is None:
        return f"sqlite:///{ctx.checkpoints / 'optuna.db'}"
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:
        return storage.split("@")[-1]
