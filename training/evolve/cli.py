"""``fluxscore evolve plan|run PLAN.yaml``: check a round's plan, run (or resume) it.

Exit codes: ``0`` done (``plan``: the plan is valid), ``1`` the plan is invalid (every problem listed, one per
line) or the round could not run (the message names the initiative or file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from scoring.cli import print_table
from scoring.exceptions import FluxscoreError
from training.evolve.exceptions import PlanError
from training.evolve.plan import Checked, check_file, describe_steps, money
from training.progress import progress_display

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Improvement rounds under a compute budget: plan, run, report.")
console = Console(stderr=True)
out = Console()

PlanArg = Annotated[Path, typer.Argument(help="the round's plan (YAML)", show_default=False)]


def _problems(exc: PlanError) -> typer.Exit:
    where = f"{exc.path}: " if exc.path else ""
    # Plain lines, never wrapped: one problem per line, whatever the terminal's width.
    typer.echo(f"{where}invalid plan ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}):",
               err=True)
    for problem in exc.problems:
        typer.echo(f"  {problem}", err=True)
    return typer.Exit(code=1)


def _fail(exc: BaseException) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False, markup=True)
    return typer.Exit(code=1)


def print_plan(checked: Checked) -> None:
    plan = checked.plan
    cur = plan.currency
    table = Table(title=f"round {plan.round}: budget {money(plan.budget, cur)}")
    for col in ("rank", "name", "kind", "filter", "device", "allocation", "hours", "share", "metric",
                "expected lift", "depends on"):
        table.add_column(col, justify="right" if col in ("rank", "allocation", "hours", "share") else "left")
    for spec in sorted(plan.initiatives, key=lambda s: s.rank):
        price = plan.devices[spec.device].price_per_hour
        hours = spec.hours if spec.hours is not None else spec.allocation / price
        table.add_row(str(spec.rank), spec.name, spec.kind, checked.packages[spec.name].ref, spec.device,
                      money(spec.allocation, cur), f"{hours:.3g}" + ("" if spec.hours is not None else " (implied)"),
                      f"{spec.allocation / plan.budget:.0%}", spec.metric, f"{spec.expected_lift:+g}",
                      ", ".join(spec.depends_on) or "–")
    total = sum(s.allocation for s in plan.initiatives)
    print_table(table, out)
    out.print(f"allocated {money(total, cur)} of {money(plan.budget, cur)} ({total / plan.budget:.0%}); devices: "
              + ", ".join(f"{k} ×{d.count} at {money(d.price_per_hour, cur)}/h" for k, d in plan.devices.items()))
    out.print("schedule:", highlight=False)
    for line in describe_steps(checked.steps):
        out.print(f"  {line}", highlight=False)


@app.command("plan")
def plan_cmd(plan: PlanArg) -> None:
    """Validate a plan and print it with its schedule (which initiatives run side by side)."""
    try:
        checked = check_file(plan)
    except PlanError as exc:
        raise _problems(exc) from None
    except FluxscoreError as exc:
        raise _fail(exc) from None
    print_plan(checked)


@app.command("run")
def run_cmd(plan: PlanArg,
            work: Annotated[Path | None, typer.Option("--work", "-w", help="the round's directory "
                                                      "(default out/evolve/<round>)")] = None,
            resume: Annotated[bool, typer.Option("--resume", help="go on with the round in --work from its "
                                                 "ledger and checkpoints")] = False,
            eval_device: Annotated[str, typer.Option(help="device the held-out evaluation scores on")] = "cpu",
            cache: Annotated[Path | None, typer.Option(help="embedding cache directory "
                                                       "(default $FLUXSCORE_CACHE_DIR/embeddings)")] = None) -> None:
    """Run the round (or resume it): initiatives on their meters, held-out evaluation, report."""
    from training.evolve.runner import run_round

    try:
        with progress_display(console) as progress:
            result = run_round(plan, work, resume=resume, eval_device=eval_device, cache_dir=cache,
                               progress=progress)
    except PlanError as exc:
        raise _problems(exc) from None
    except (FluxscoreError, OSError) as exc:
        raise _fail(exc) from None
    cur = result.checked.plan.currency
    for spec in sorted(result.checked.plan.initiatives, key=lambda s: s.rank):
        ev = result.evaluations.get(spec.name, {})
        lift = ev.get("lift")
        out.print(f"{spec.name}: {result.status(spec.name)}, cost {money(result.ledger.spent(spec.name), cur)}"
                  + (f", lift {lift:+.4g} on {spec.metric}" if isinstance(lift, float) else "")
                  + (f" ({ev['error']})" if ev.get("error") else ""), highlight=False)
    out.print(f"spent {money(result.ledger.total_spent(), cur)} of {money(result.checked.plan.budget, cur)}; "
              f"report: {result.report}", highlight=False)


def register(parent: typer.Typer) -> None:
    """Add ``fluxscore evolve …`` to the top-level app (through the ``train`` entry point: training.cli.register)."""
    parent.add_typer(app, name="evolve", help="Improvement rounds under a compute budget: plan, run, report.")
