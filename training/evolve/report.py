"""The round's report: ``<work>/report.md`` with its plots, the winner exported, a draft next round.

Every figure is read from the ledger (costs, device time, status) and from the held-out evaluation
(``evaluation.json``: metric values, lift, bootstrap interval); nothing an initiative says about itself is
restated as a result. The success rules are the plan's (``success``): at least one of the ``top``
best-ranked initiatives lifts its held-out metric by ``min_lift`` or more, and the round spent no more than
its budget.

The winner is the best lift among candidates whose interval lies above 0; when none does, the best positive
lift (the report says it is not significant); a candidate worse than its parent never wins. It is exported
with :func:`training.steps.run_export` to ``<work>/export/<name>/<version>`` — a complete package, ready
for the stream's shadow role — and ``next-round.yaml`` drafts a plan that scales the winner's allocation
(``scale``) with the winner as parent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from training.evolve.plan import InitiativeSpec, Plan, dump_plan, money, validate_plan
from training.report import Report

if TYPE_CHECKING:
    from training.evolve.runner import RoundResult

SCALE = 2.0


@dataclass
class Row:
    spec: InitiativeSpec
    status: str
    spent: float
    device_hours: float
    evaluation: dict[str, Any]

    def value(self, key: str) -> float | None:
        v = self.evaluation.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    @property
    def lift(self) -> float | None:
        return self.value("lift")

    @property
    def return_per_money(self) -> float | None:
        lift = self.lift
        return lift / self.spent if lift is not None and self.spent > 0 else None

    @property
    def significant(self) -> bool:
        low = self.value("ci_low")
        return low is not None and low > 0


def rows(result: RoundResult) -> list[Row]:
    ledger = result.ledger
    return [Row(spec=s, status=ledger.status(s.name), spent=ledger.spent(s.name),
                device_hours=ledger.device_seconds(s.name) / 3600.0, evaluation=result.evaluations.get(s.name, {}))
            for s in sorted(result.checked.plan.initiatives, key=lambda s: s.rank)]


@dataclass
class Rules:
    lift_ok: bool
    lift_detail: str
    budget_ok: bool
    budget_detail: str

    @property
    def passed(self) -> bool:
        return self.lift_ok and self.budget_ok


def success_rules(plan: Plan, table: list[Row], total: float) -> Rules:
    top = table[:plan.success.top]
    hits = [r for r in top if r.lift is not None and r.lift >= plan.success.min_lift]
    lifts = ", ".join(f"{r.spec.name} {r.lift:+.4g}" if r.lift is not None else f"{r.spec.name} –" for r in top)
    lift_detail = (f"top {len(top)} by rank: {lifts}; needed ≥ {plan.success.min_lift:g} — "
                   + (f"met by {', '.join(r.spec.name for r in hits)}" if hits else "met by none"))
    cur = plan.currency
    budget_detail = f"spent {money(total, cur)} of {money(plan.budget, cur)}"
    return Rules(lift_ok=bool(hits), lift_detail=lift_detail, budget_ok=total <= plan.budget + 1e-9,
                 budget_detail=budget_detail)


def choose_winner(table: list[Row]) -> Row | None:
    """The best lift among candidates whose interval lies above 0; failing that, the best positive lift
    (not significant: the report says so). A candidate worse than its parent never wins: exporting it, or
    scaling it next round, would spend money to go backwards."""
    judged = [r for r in table if r.lift is not None and r.lift > 0]
    if not judged:
        return None
    pool = [r for r in judged if r.significant] or judged
    return max(pool, key=lambda r: (r.lift, -r.spec.rank))


def _bars(labels: list[str], series: dict[str, list[float]], title: str, ylabel: str,
          errors: list[tuple[float, float]] | None = None) -> Figure:
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 2), 3.2))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(labels))]
        yerr = None
        if errors is not None:
            yerr = [[max(v - lo, 0) for v, (lo, _) in zip(values, errors, strict=True)],
                    [max(hi - v, 0) for v, (_, hi) in zip(values, errors, strict=True)]]
        ax.bar(xs, values, width=width, label=name, yerr=yerr, capsize=4)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels, rotation=20)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def _expected_vs_measured(table: list[Row]) -> Figure:
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    pts = [(r.spec.expected_lift, r.lift, r.spec.name) for r in table if r.lift is not None]
    for x, y, name in pts:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), fontsize=8)
    values = [v for x, y, _ in pts for v in (x, y)] or [0.0, 1.0]
    lo, hi = min([*values, 0.0]), max([*values, 0.0])
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("expected lift")
    ax.set_ylabel("measured lift (held out)")
    ax.set_title("expected vs measured")
    fig.tight_layout()
    return fig


def _fmt(v: float | None, spec: str = "+.4g") -> str:
    return "–" if v is None else format(v, spec)


def next_plan(result: RoundResult, table: list[Row], winner: Row, exported: Path, *, scale: float = SCALE) -> Plan:
    """A draft of the next round: the winner (now the parent) with ``scale`` × its allocation at rank 1, the
    other initiatives that lifted their metric kept as they were; budget = the allocations' sum."""
    plan = result.checked.plan
    base = result.checked.base

    def absolute(raw: str) -> str:
        p = Path(raw).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    kept = [winner] + [r for r in table if r is not winner and r.lift is not None and r.lift > 0]
    names = {r.spec.name for r in kept}
    winner_name = result.checked.packages[winner.spec.name].name
    specs = []
    for rank, row in enumerate(kept, 1):
        spec = row.spec
        parent = result.checked.packages[spec.name]
        factor = scale if row is winner else 1.0
        specs.append(spec.model_copy(update={
            "rank": rank, "allocation": round(spec.allocation * factor, 6),
            "hours": round(spec.hours * factor, 6) if spec.hours is not None else None,
            "filter": str(exported) if parent.name == winner_name else str(parent.path),
            "depends_on": tuple(d for d in spec.depends_on if d in names),
            "expected_lift": row.lift if row.lift is not None else spec.expected_lift,
            "data": tuple(absolute(d) for d in spec.data)}))
    return plan.model_copy(update={
        "round": f"{plan.round}-next", "budget": round(sum(s.allocation for s in specs), 6),
        "data": tuple(absolute(d) for d in plan.data), "initiatives": tuple(specs)})


def write_report(result: RoundResult, *, scale: float = SCALE) -> Path:
    from training.steps import run_export

    plan = result.checked.plan
    cur = plan.currency
    table = rows(result)
    total = result.ledger.total_spent()
    rules = success_rules(plan, table, total)
    report = Report(result.work, "report", f"evolve round {plan.round}")
    report.text(f"Budget {money(plan.budget, cur)}, spent {money(total, cur)} (from `ledger.jsonl`). "
                f"{len(result.split.heldout_ids)} real articles held out (`heldout.json`); no initiative trained on "
                "them. Lifts are measured on them against each initiative's parent, scored through the serving "
                "pipeline, with a paired bootstrap 95% interval; better is positive (for MAE: parent − candidate).")
    report.heading("Initiatives")
    report.table(["rank", "initiative", "kind", "status", "allocation", "cost", "device-hours", "metric", "parent",
                  "candidate", "lift", "95% CI", "return per " + cur, "expected lift", "measured / expected"],
                 [[r.spec.rank, r.spec.name, r.spec.kind, r.status, money(r.spec.allocation, cur), money(r.spent, cur),
                   f"{r.device_hours:.4g}", r.spec.metric, _fmt(r.value("parent"), ".4g"),
                   _fmt(r.value("candidate"), ".4g"), _fmt(r.lift),
                   "–" if r.value("ci_low") is None else f"[{r.value('ci_low'):+.4g}, {r.value('ci_high'):+.4g}]",
                   _fmt(r.return_per_money),
                   f"{r.spec.expected_lift:+.4g}",
                   _fmt(r.lift / r.spec.expected_lift if r.lift is not None and r.spec.expected_lift else None, ".3g")]
                  for r in table])
    notes = [(r.spec.name, r.evaluation.get("error") or _stop_note(result, r.spec.name)) for r in table]
    notes = [(n, why) for n, why in notes if why]
    if notes:
        report.heading("Notes")
        report.table(["initiative", "note"], [[n, why] for n, why in notes])
    labels = [r.spec.name for r in table]
    report.figure("cost", _bars(labels, {"allocation": [r.spec.allocation for r in table],
                                         "cost": [r.spent for r in table]}, "allocation and cost", cur), "cost")
    judged = [r for r in table if r.lift is not None]
    if judged:
        report.figure("lift", _bars([f"{r.spec.name}\n({r.spec.metric})" for r in judged],
                                    {"lift": [r.lift or 0.0 for r in judged]}, "held-out lift (95% CI)", "lift",
                                    errors=[(r.value("ci_low") or 0.0, r.value("ci_high") or 0.0) for r in judged]),
                      "lift with bootstrap interval")
        report.figure("return", _bars([r.spec.name for r in judged],
                                      {"return": [r.return_per_money or 0.0 for r in judged]},
                                      f"lift per {cur}", f"lift / {cur}"), "return per unit of money")
        report.figure("expected", _expected_vs_measured(table), "expected vs measured")
    report.heading("Success rules")
    report.table(["rule", "result", "detail"],
                 [[f"one of the top {plan.success.top} lifts its metric by ≥ {plan.success.min_lift:g}",
                   "pass" if rules.lift_ok else "fail", rules.lift_detail],
                  ["within budget", "pass" if rules.budget_ok else "fail", rules.budget_detail]])
    report.text(f"**Round {'passed' if rules.passed else 'failed'}.**")
    report.heading("Winner")
    winner = choose_winner(table)
    if winner is None:
        report.text("No candidate was judged better than its parent on the held-out set: nothing exported, "
                    "no next round drafted.")
        report.write()
        return result.work / "report.md"
    outcome = result.outcomes[winner.spec.name]
    assert outcome.package_dir is not None  # judged candidates have one
    exported = run_export(outcome.package_dir, None, result.work / "export", overwrite=True)
    pkg = exported.package
    sig = ("its interval lies above 0" if winner.significant else
           "**not significant**: no candidate's interval lies above 0; the best positive lift, exported to be "
           "looked at in the shadow role before anything else")
    report.text(f"`{winner.spec.name}` ({winner.spec.kind}): lift {winner.lift:+.4g} on {winner.spec.metric}; {sig}. "
                f"Exported as `{pkg.ref}` to `{pkg.path}` (package_hash `{exported.package_hash}`).")
    report.text("Shadow it beside the live version in the stream (scores go to `scores.shadow`):\n\n```bash\n"
                f"FLUXSCORE_FILTERS_PATH={pkg.path.parent.parent} FLUXSCORE_SHADOW_FILTERS={pkg.ref} "
                "fluxscore worker --role shadow\n```")
    draft = next_plan(result, table, winner, pkg.path, scale=scale)
    validate_plan(draft, result.checked.base, params=result.params, path="next-round.yaml")
    (result.work / "next-round.yaml").write_text(
        f"# Draft next round from {plan.round}: {winner.spec.name} scaled ×{scale:g}. Check before running.\n"
        + dump_plan(draft), encoding="utf-8")
    report.text(f"Draft next round: `next-round.yaml` ({winner.spec.name} with "
                f"{money(draft.initiatives[0].allocation, cur)}, budget {money(draft.budget, cur)}); "
                "it passes `fluxscore evolve plan`.")
    report.write()
    return result.work / "report.md"


def _stop_note(result: RoundResult, name: str) -> str | None:
    for entry in reversed(result.ledger.entries):
        if entry["initiative"] == name and entry["kind"] in ("stopped", "failed", "done"):
            return None if entry["kind"] == "done" else f"{entry['kind']}: {entry.get('reason')}"
    return None
