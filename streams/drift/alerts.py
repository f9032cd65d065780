"""Alert rules: what turns a drift report into a page for whoever is on call.

Each rule compares the current window with the reference and fires when a threshold of the filter's
``drift.alerts`` (:class:`scoring.package.DriftAlerts`) is crossed. The rules aimed at *silent* failures —
the ones no exception shows — are:

- ``score_collapse``: the scored records' weighted-average mean or spread fell below a fraction of the
  reference's (a model returning constants or zeros);
- ``escalation_rate``: the stage-2 share of scored records doubled or halved (a threshold or probe gone wrong);
- ``prefilter_pass_rate`` and ``commerce_block_rate``: a rule or the detector started blocking (or passing)
  much more than before;
- ``language_mix``: the articles' languages changed (a new feed, a broken language field);
- ``embedding_drift``: Evidently's embedding drift says current stage-1 embeddings are told apart from the
  reference ones (another topic or language arriving);
- ``column_drift``: a large share of the per-column Evidently drift tests fire.

A relative threshold alone would fire on sampling noise in a small window (a pass rate of 10 % moves
by 20 % from one window of 200 records to the next by chance), so the rate and mix rules also need a
two-sided test at ``significance``: a real change of that size in a window of a few hundred records
clears both, noise clears at most one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from scoring.drift import SCORED_STAGES, Row
from scoring.package import DriftAlerts

Severity = Literal["warning", "critical"]
RULES = ("score_collapse", "escalation_rate", "prefilter_pass_rate", "commerce_block_rate", "language_mix",
         "embedding_drift", "column_drift")


@dataclass(frozen=True)
class Alert:
    rule: str
    severity: Severity
    message: str
    value: float | None
    reference: float | None
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _rate(rows: Sequence[Row], hit: Any, within: Any = None) -> tuple[int, int]:
    """(hits, n) over ``rows`` (only those ``within`` accepts, when given)."""
    pool = [r for r in rows if within is None or within(r)]
    return sum(1 for r in pool if hit(r)), len(pool)


def _two_proportion_p(h1: int, n1: int, h2: int, n2: int) -> float:
    pooled = (h1 + h2) / (n1 + n2)
    if pooled <= 0.0 or pooled >= 1.0:
        return 1.0
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    return math.erfc(abs(h1 / n1 - h2 / n2) / se / math.sqrt(2.0))


def rates(rows: Sequence[Row]) -> dict[str, float | None]:
    """The window statistics the rules and the page show: rates and the scored records' mean and spread."""
    scored = [float(r["weighted_average"]) for r in rows if r.get("stage") in SCORED_STAGES]
    esc, n_scored = _rate(rows, lambda r: r["stage"] == "stage2", lambda r: r.get("stage") in SCORED_STAGES)
    passed, n = _rate(rows, lambda r: r.get("prefilter") == "passed")
    commerce, _ = _rate(rows, lambda r: r.get("stage") == "commerce")

    def share(hits: int, total: int) -> float | None:
        return round(hits / total, 6) if total else None

    return {"rows": float(len(rows)), "scored": float(n_scored), "escalation_rate": share(esc, n_scored),
            "prefilter_pass_rate": share(passed, n), "commerce_block_rate": share(commerce, n),
            "score_mean": round(float(np.mean(scored)), 6) if scored else None,
            "score_std": round(float(np.std(scored, ddof=1)), 6) if len(scored) > 1 else None}


def _relative_rule(rule: str, label: str, ref_rows: Sequence[Row], cur_rows: Sequence[Row], hit: Any,
                   limit: float, cfg: DriftAlerts, within: Any = None) -> Alert | None:
    h1, n1 = _rate(ref_rows, hit, within)
    h2, n2 = _rate(cur_rows, hit, within)
    if n1 < cfg.min_rows or n2 < cfg.min_rows or h1 + h2 == 0:
        return None
    ref, cur = h1 / n1, h2 / n2
    change = abs(cur - ref) / ref if ref > 0 else math.inf
    if change > limit and _two_proportion_p(h1, n1, h2, n2) < cfg.significance:
        how = f"{change:.0%}" if math.isfinite(change) else "from none"
        return Alert(rule, "warning", f"{label} moved {how} ({ref:.1%} → {cur:.1%}; limit {limit:.0%})",
                     round(cur, 6), round(ref, 6), limit)
    return None


def _escalation(ref_rows: Sequence[Row], cur_rows: Sequence[Row], cfg: DriftAlerts) -> Alert | None:
    def scored(r: Row) -> bool:
        return r.get("stage") in SCORED_STAGES

    h1, n1 = _rate(ref_rows, lambda r: r["stage"] == "stage2", scored)
    h2, n2 = _rate(cur_rows, lambda r: r["stage"] == "stage2", scored)
    if n1 < cfg.min_rows or n2 < cfg.min_rows or h1 + h2 == 0:
        return None  # not enough scored records, or a filter without stage 2
    ref, cur = h1 / n1, h2 / n2
    ratio = math.inf if ref == 0 or cur == 0 else max(cur / ref, ref / cur)
    if ratio >= cfg.escalation_ratio and _two_proportion_p(h1, n1, h2, n2) < cfg.significance:
        way = "rose" if cur > ref else "fell"
        return Alert("escalation_rate", "warning", f"escalation rate {way} from {ref:.1%} to {cur:.1%} of scored "
                     f"records (limit ×{cfg.escalation_ratio:g})", round(cur, 6), round(ref, 6),
                     cfg.escalation_ratio)
    return None


def _collapse(ref_rows: Sequence[Row], cur_rows: Sequence[Row], cfg: DriftAlerts) -> Alert | None:
    from scipy import stats

    ref = np.asarray([float(r["weighted_average"]) for r in ref_rows if r.get("stage") in SCORED_STAGES])
    cur = np.asarray([float(r["weighted_average"]) for r in cur_rows if r.get("stage") in SCORED_STAGES])
    if len(ref) < cfg.min_rows or len(cur) < cfg.min_rows:
        return None
    frac = cfg.score_collapse
    ref_mean, cur_mean = float(ref.mean()), float(cur.mean())
    ref_std, cur_std = float(ref.std(ddof=1)), float(cur.std(ddof=1))
    if ref_mean > 0 and cur_mean < frac * ref_mean:
        p = float(stats.ttest_ind(ref, cur, equal_var=False).pvalue) if cur_std > 0 or ref_std > 0 else 0.0
        if p < cfg.significance:
            return Alert("score_collapse", "critical", f"scores collapsed: mean weighted average {cur_mean:.2f}, "
                         f"reference {ref_mean:.2f} (limit {frac:.0%} of it)", round(cur_mean, 6),
                         round(ref_mean, 6), frac)
    if ref_std > 0 and cur_std < frac * ref_std:
        p = 0.0 if cur_std == 0 else float(stats.levene(ref, cur).pvalue)
        if p < cfg.significance:
            return Alert("score_collapse", "critical", f"scores collapsed: spread (sd) of the weighted average "
                         f"{cur_std:.2f}, reference {ref_std:.2f} (limit {frac:.0%} of it)", round(cur_std, 6),
                         round(ref_std, 6), frac)
    return None


def language_mix(rows: Sequence[Row]) -> Counter[str]:
    return Counter(str(r.get("language") or "unknown") for r in rows)


def _languages(ref_rows: Sequence[Row], cur_rows: Sequence[Row], cfg: DriftAlerts) -> Alert | None:
    from scipy import stats

    ref, cur = language_mix(ref_rows), language_mix(cur_rows)
    n1, n2 = sum(ref.values()), sum(cur.values())
    if n1 < cfg.min_rows or n2 < cfg.min_rows:
        return None
    langs = sorted(set(ref) | set(cur))
    if len(langs) < 2:
        return None
    tvd = 0.5 * sum(abs(ref[k] / n1 - cur[k] / n2) for k in langs)
    if tvd < cfg.language_shift:
        return None
    table = np.asarray([[ref[k] for k in langs], [cur[k] for k in langs]], dtype=float)
    p = float(stats.chi2_contingency(table).pvalue)
    if p >= cfg.significance:
        return None
    moved = sorted(langs, key=lambda k: -abs(ref[k] / n1 - cur[k] / n2))[:3]
    detail = ", ".join(f"{k} {ref[k] / n1:.0%} → {cur[k] / n2:.0%}" for k in moved)
    return Alert("language_mix", "warning", f"language mix changed by {tvd:.0%} (total variation; limit "
                 f"{cfg.language_shift:.0%}): {detail}", round(tvd, 6), None, cfg.language_shift)


def evaluate(ref_rows: Sequence[Row], cur_rows: Sequence[Row], cfg: DriftAlerts, *,
             embedding_score: float | None = None, drifted_share: float | None = None) -> list[Alert]:
    """Every rule that fires for this window, most severe first."""
    found = [
        _collapse(ref_rows, cur_rows, cfg),
        _escalation(ref_rows, cur_rows, cfg),
        _relative_rule("prefilter_pass_rate", "prefilter pass rate", ref_rows, cur_rows,
                       lambda r: r.get("prefilter") == "passed", cfg.prefilter_change, cfg),
        _relative_rule("commerce_block_rate", "commerce block rate", ref_rows, cur_rows,
                       lambda r: r.get("stage") == "commerce", cfg.commerce_change, cfg),
        _languages(ref_rows, cur_rows, cfg),
    ]
    if embedding_score is not None and embedding_score >= cfg.embedding_drift:
        found.append(Alert("embedding_drift", "warning", f"stage-1 embeddings drifted: Evidently embedding drift "
                           f"{embedding_score:.2f} (limit {cfg.embedding_drift:.2f})", round(embedding_score, 6),
                           None, cfg.embedding_drift))
    if drifted_share is not None and drifted_share >= cfg.drifted_share:
        found.append(Alert("column_drift", "warning", f"{drifted_share:.0%} of the watched columns drifted at "
                           f"p < {cfg.significance:g} (limit "
                           f"{cfg.drifted_share:.0%})", round(drifted_share, 6), None, cfg.drifted_share))
    alerts = [a for a in found if a is not None]
    return sorted(alerts, key=lambda a: (a.severity != "critical", RULES.index(a.rule)))
