"""A whole round on a tiny real package: a real initiative retrains the probe, both packages score the
held-out articles through the pipeline, and the report's figures come from the ledger and that evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from scoring.package import load_package
from tests.training.evolve.conftest import ReprobeParams, base_plan, reprobe, write_plan
from training.dataset import LabelledSet
from training.evolve.evaluate import Scored, compare
from training.evolve.plan import InitiativeSpec, check_file
from training.evolve.report import Row, choose_winner
from training.evolve.runner import run_round

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def round_result(tmp_path_factory: pytest.TempPathFactory, evolve_data: Path, parent_root: Path,
                 evolve_cache: Path) -> Any:
    tmp = tmp_path_factory.mktemp("round")
    plan = write_plan(tmp / "plan.yaml", base_plan(evolve_data, parent_root / "evo" / "1.0.0"))
    return run_round(plan, tmp / "work", initiatives={"reprobe": reprobe}, params={"reprobe": ReprobeParams},
                     cache_dir=evolve_cache, resamples=300)


def test_parent_package(parent_root: Path) -> None:
    """Trains the session's parent package (its time shows here, not in the round's tests)."""
    load_package(parent_root / "evo" / "1.0.0").verify()


def test_round_judges_candidate_on_heldout(round_result: Any) -> None:
    r = round_result
    assert r.status("wide-probe") == "done"
    ev = r.evaluations["wide-probe"]
    assert ev["candidate_ref"] == "evo@1.0.0-reprobe64" and ev["parent_ref"] == "evo@1.0.0"
    assert ev["heldout_articles"] == len(r.split.heldout_ids) >= 15
    # MAE reported as MAE; lift = parent - candidate; the interval brackets it
    assert ev["lift"] == pytest.approx(ev["parent"] - ev["candidate"])
    assert ev["ci_low"] <= ev["lift"] <= ev["ci_high"]
    # 64 hidden units and 80 epochs beat 4 units and 2 epochs (seeded; on 40 articles not significantly)
    assert ev["lift"] > 0
    assert ev["parent_articles_per_s"] is None       # scored from the embedding cache: no serving rate
    # the candidate trained on none of the held-out articles
    ws = r.work / "initiatives" / "wide-probe" / "ws" / "splits"
    trained = {orjson.loads(line)["id"] for f in ws.glob("*.jsonl") for line in f.read_bytes().splitlines()}
    assert trained and not trained & r.split.heldout_ids


def test_report_figures_come_from_ledger_and_evaluation(round_result: Any) -> None:
    r = round_result
    text = r.report.read_text()
    spent = r.ledger.spent("wide-probe")
    ev = r.evaluations["wide-probe"]
    assert spent > 0
    row = next(line for line in text.splitlines() if line.startswith("| 1 | wide-probe"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "done" and cells[5] == f"${spent:,.2f}"
    assert cells[10] == f"{ev['lift']:+.4g}" and cells[12] == f"{ev['lift'] / spent:+.4g}"
    assert f"[{ev['ci_low']:+.4g}, {ev['ci_high']:+.4g}]" in row
    assert "within budget | pass" in text
    for png in ("report-cost.png", "report-lift.png", "report-return.png", "report-expected.png"):
        assert (r.work / png).stat().st_size > 1000
    # the winner exported as a new, verified package version, and the shadow command to try it
    exported = load_package(r.work / "export" / "evo" / "1.0.0-reprobe64")
    exported.verify()
    assert "FLUXSCORE_SHADOW_FILTERS=evo@1.0.0-reprobe64 fluxscore worker --role shadow" in text
    # a valid next round, the winner scaled and now the parent
    nxt = check_file(r.work / "next-round.yaml", params={"reprobe": ReprobeParams})
    spec = nxt.plan.initiatives[0]
    assert spec.allocation == pytest.approx(10.0) and nxt.packages[spec.name].version == "1.0.0-reprobe64"


def test_resume_reuses_outcome_and_evaluation(round_result: Any, evolve_cache: Path) -> None:
    r = round_result
    charges = len(r.ledger.entries)
    plan = r.work.parent / "plan.yaml"
    again = run_round(plan, r.work, resume=True, initiatives={"reprobe": reprobe},
                      params={"reprobe": ReprobeParams}, cache_dir=evolve_cache, resamples=300)
    assert len(again.ledger.entries) == charges            # nothing run or charged again
    assert again.evaluations == r.evaluations


def _row(name: str, rank: int, lift: float | None, low: float | None) -> Row:
    spec = InitiativeSpec(name=name, kind="sweep", rank=rank, filter="demo", allocation=1.0, device="cpu")
    return Row(spec=spec, status="done", spent=1.0, device_hours=1.0,
               evaluation={} if lift is None else {"lift": lift, "ci_low": low, "ci_high": lift + 1})


def test_winner_rule() -> None:
    best_significant = _row("b", 2, 0.2, 0.01)
    rows = [_row("a", 1, 0.5, -0.1), best_significant, _row("c", 3, 0.1, 0.05), _row("d", 4, None, None)]
    assert choose_winner(rows) is best_significant             # significance first, then the lift
    unsure = _row("a", 1, 0.05, -0.2)
    assert choose_winner([unsure, _row("b", 2, -0.3, -0.5)]) is unsure   # the best positive lift
    assert choose_winner([_row("b", 2, -0.3, -0.5), _row("d", 4, None, None)]) is None   # never a worse one


def _scored(pred: list[list[float]], tiers: list[str]) -> Scored:
    return Scored(ref="x", package_hash="h", pred=np.asarray(pred, float), tiers=tiers, batch_sizes=[len(pred)],
                  batch_seconds=[1.0])


def test_compare_signs_and_recall() -> None:
    from scoring.package import resolve

    pkg = resolve("demo")
    targets = np.asarray([[8.0, 8, 8, 8], [1, 1, 1, 1], [5, 5, 5, 5], [2, 2, 2, 2]])
    data = LabelledSet(records=[{}] * 4, targets=targets, dimensions=pkg.config.dimension_names, texts=[""] * 4)
    parent = _scored((targets + 2.0).tolist(), ["HIGH", "MEDIUM", "LOW", "LOW"])
    cand = _scored((targets + 0.5).tolist(), ["HIGH", "LOW", "MEDIUM", "LOW"])
    mae = compare("mae", parent, cand, data, pkg, resamples=200)
    assert (mae.parent, mae.candidate, mae.lift) == pytest.approx((2.0, 0.5, 1.5))
    assert mae.ci_low == pytest.approx(1.5) and mae.ci_high == pytest.approx(1.5)   # same error everywhere
    acc = compare("tier_accuracy", parent, cand, data, pkg, resamples=200)
    assert (acc.parent, acc.candidate, acc.lift) == pytest.approx((0.5, 1.0, 0.5))
    rec = compare("recall_medium_high", parent, cand, data, pkg, resamples=200)
    assert rec.n == 2 and (rec.parent, rec.candidate) == pytest.approx((0.5, 1.0))
    one = compare("mae:reach", parent, cand, data, pkg, resamples=50)
    assert one.lift == pytest.approx(1.5)
