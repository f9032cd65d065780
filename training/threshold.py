"""Choosing a filter's escalation threshold on held-out labelled data.

The pipeline sends an article to stage 2 iff its stage-1 estimate (the calibrated, uncapped weighted
average of the probe's scores) is at or above ``stage1.threshold``; below it the stage-1 score is final.
A *false negative* is an article whose oracle tier is MEDIUM or above that stays on stage 1. The
threshold is the highest one (most articles skipped) whose false-negative rate stays within a target.

Picking it on the probe's training data is what made the original system lose about a quarter of its
MEDIUM+ articles on new data: training predictions are too good. Here the estimates must come from
articles the probe never trained on (the calibration split; with its isotonic maps cross-fitted when
they were fitted on the same rows), and three rules are offered for turning the few positives there
into a threshold:

- ``empirical``: the observed false-negative rate ≤ target. With n positives, one miss already costs
  1/n, so on small data this is the sample minimum and holds only loosely out of sample.
- ``smoothed`` (default): the rate estimated from a Gaussian kernel around each positive's estimate
  (bandwidth: Silverman's rule on the positives, floored by the residual spread of the near-boundary
  articles), which extends the sample's lower tail instead of trusting its minimum.
- ``wilson``: the upper end of the 95% Wilson interval of the observed rate ≤ target — a guarantee,
  but one that needs more than ~150 positives before any article may be skipped at 2%.

The speed-up reported is that of the two-stage cascade over sending everything to stage 2:
``1 / (cost_ratio + 1 - skip_rate)``, with ``cost_ratio`` = stage-1 cost / stage-2 cost per article.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scoring.aggregate import Tier, aggregate
from scoring.exceptions import PackageError
from scoring.package import CONFIG_NAME, STAGE1_FINAL, FilterConfig, escalation_mask, load_config

Method = Literal["empirical", "smoothed", "wilson"]
METHODS: tuple[str, ...] = ("empirical", "smoothed", "wilson")
DEFAULT_TARGET = 0.02
# Stage-1 (MiniLM embedding + MLP) against stage-2 (Gemma-3-1B) cost per article on one GPU: ~0.5 ms
# against ~20 ms, as the original system measured; override with measured timings.
DEFAULT_COST_RATIO = 0.025
_Z95 = 1.959963984540054


def stage1_estimates(config: FilterConfig, calibrated: np.ndarray) -> np.ndarray:
    """What the pipeline compares with the threshold: the uncapped weighted average."""
    return np.asarray([aggregate(config, row).uncapped_average for row in np.asarray(calibrated)])


def oracle_positive(config: FilterConfig, targets: np.ndarray) -> np.ndarray:
    """True where the oracle's scores put the article in MEDIUM or HIGH (gatekeepers applied)."""
    return np.asarray([aggregate(config, row).tier != Tier.LOW for row in np.asarray(targets)], dtype=bool)


def wilson_upper(k: int, n: int, z: float = _Z95) -> float:
    if n == 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def _phi(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.asarray(ndtr(x), dtype=np.float64)


def bandwidth(estimates: np.ndarray, positive: np.ndarray, oracle_weighted: np.ndarray | None,
              medium: float) -> float:
    pos = estimates[positive]
    if len(pos) < 2:
        return 1.0
    sd = float(np.std(pos, ddof=1))
    iqr = float(np.subtract(*np.percentile(pos, [75, 25]))) / 1.349
    spread = min(sd, iqr) if iqr > 0 else sd
    h = 0.9 * spread * len(pos) ** -0.2
    if oracle_weighted is not None:
        # How far estimates stray from the oracle near the tier boundary is a floor on how sure we can be.
        near = np.abs(oracle_weighted - medium) <= 1.5
        if near.sum() >= 5:
            h = max(h, float(np.std(oracle_weighted[near] - estimates[near], ddof=1)) * 0.5)
    return max(h, 0.05)


@dataclass
class SweepPoint:
    threshold: float
    skip_rate: float
    false_negatives: int
    fn_rate: float
    fn_rate_smoothed: float
    fn_rate_wilson: float


def sweep(estimates: np.ndarray, positive: np.ndarray, *, h: float,
          thresholds: np.ndarray | None = None) -> list[SweepPoint]:
    est = np.asarray(estimates, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if thresholds is None:
        thresholds = np.round(np.arange(0.0, 10.0001, 0.05), 4)
    n_pos = int(pos.sum())
    points = []
    for t in thresholds:
        skipped = est < t
        fn = int((skipped & pos).sum())
        smooth = float(_phi((t - est[pos]) / h).mean()) if n_pos else 0.0
        points.append(SweepPoint(threshold=float(t), skip_rate=float(skipped.mean()) if len(est) else 0.0,
                                 false_negatives=fn, fn_rate=fn / n_pos if n_pos else 0.0,
                                 fn_rate_smoothed=smooth, fn_rate_wilson=wilson_upper(fn, n_pos)))
    return points


def evaluate(estimates: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    est = np.asarray(estimates, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    skipped = est < threshold
    n_pos = int(pos.sum())
    fn = int((skipped & pos).sum())
    return {"n": len(est), "positives": n_pos, "skip_rate": float(skipped.mean()) if len(est) else 0.0,
            "false_negatives": fn, "fn_rate": fn / n_pos if n_pos else 0.0,
            "fn_rate_wilson_upper": wilson_upper(fn, n_pos)}


def expected_speedup(skip_rate: float, cost_ratio: float = DEFAULT_COST_RATIO) -> float:
    return 1.0 / (cost_ratio + 1.0 - skip_rate)


@dataclass
class ThresholdChoice:
    threshold: float
    method: str
    target_fnr: float
    bandwidth: float
    holdout: dict[str, float]
    test: dict[str, float] | None
    cost_ratio: float
    speedup_holdout: float
    speedup_test: float | None
    sweep: list[SweepPoint] = field(default_factory=list)
    note: str = ""
    # Set when the student was compared with the probe (training.steps.run_threshold(gate_student=True)).
    routing: Routing | None = None

    def summary(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("sweep")
        if self.routing is not None:
            body["routing"] = {k: v for k, v in body["routing"].items()
                               if k not in ("probe_dims", "student_dims", "figures")}
        return body


def choose(estimates: np.ndarray, positive: np.ndarray, *, target: float = DEFAULT_TARGET,
           method: str = "smoothed", oracle_weighted: np.ndarray | None = None, medium: float = 4.0,
           test_estimates: np.ndarray | None = None, test_positive: np.ndarray | None = None,
           cost_ratio: float = DEFAULT_COST_RATIO) -> ThresholdChoice:
    """Highest threshold whose false-negative rate (by ``method``) on the hold-out stays ≤ ``target``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target false-negative rate must be in [0, 1), got {target}")
    est = np.asarray(estimates, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    h = bandwidth(est, pos, oracle_weighted, medium)
    points = sweep(est, pos, h=h)
    # A finer grid just below every observed estimate, so "empirical" can sit right under a positive.
    extra = np.unique(np.clip(np.concatenate([est - 1e-4, est + 1e-4]), 0.0, 10.0))
    points = sorted(points + sweep(est, pos, h=h, thresholds=extra), key=lambda p: p.threshold)
    rate = {"empirical": lambda p: p.fn_rate, "smoothed": lambda p: p.fn_rate_smoothed,
            "wilson": lambda p: p.fn_rate_wilson}[method]
    note = ""
    ok = [p for p in points if rate(p) <= target + 1e-12]
    if pos.sum() == 0:
        chosen = 0.0
        note = "no MEDIUM+ article in the hold-out set: nothing can be shown safe to skip; threshold 0"
    elif not ok:
        chosen = 0.0
        note = (f"no threshold keeps the {method} false-negative rate at or under {target:.1%} with "
                f"{int(pos.sum())} MEDIUM+ hold-out articles; threshold 0 (escalate everything)")
    else:
        # Highest threshold whose rate is within target, with every lower threshold also within it
        # (rates are monotone in t, but the guard keeps a noisy rule from jumping over a violation).
        chosen = 0.0
        for p in points:
            if rate(p) > target + 1e-12:
                break
            chosen = p.threshold
    holdout = evaluate(est, pos, chosen)
    test = None
    if test_estimates is not None and test_positive is not None:
        test = evaluate(test_estimates, test_positive, chosen)
    return ThresholdChoice(threshold=round(chosen, 4), method=method, target_fnr=target, bandwidth=h,
                           holdout=holdout, test=test, cost_ratio=cost_ratio,
                           speedup_holdout=expected_speedup(holdout["skip_rate"], cost_ratio),
                           speedup_test=expected_speedup(test["skip_rate"], cost_ratio) if test else None,
                           sweep=points, note=note)


# -- students must earn their escalations ---------------------------------------------------------

# "Stage 1 final for all": the top of the score range, which the one routing rule
# (scoring.package.Stage1.escalates) never escalates.
# Fewer calibration rows than this above a threshold say nothing about whether the student helps there.
MIN_ESCALATED_ROWS = 10

RoutingDecision = Literal["student", "raised", "stage1", "kept"]


@dataclass
class Routing:
    """Whether, and above which stage-1 estimate, articles go to a student, and why.

    ``decision``: ``student`` (the false-negative rule's threshold stands: the student beats the probe on
    the articles it escalates), ``raised`` (the threshold moves up to where the student helps), ``stage1``
    (stage 1 final for all: threshold :data:`STAGE1_FINAL`) or ``kept`` (the student is worse but the
    false-negative threshold was kept on request). MAEs are on the same calibration rows, both stages
    calibrated out of fold; ``mae`` is the mean over dimensions, ``wavg_mae`` that of the weighted average.
    """

    decision: RoutingDecision
    threshold: float
    fn_threshold: float
    reason: str
    n: int
    probe: dict[str, float]
    student: dict[str, float]
    probe_dims: dict[str, float]
    student_dims: dict[str, float]
    escalated: int
    escalated_probe_mae: float
    escalated_student_mae: float
    student_better: bool
    # routed_errors() at the false-negative threshold and at the chosen one, per split ("calibration", "test")
    figures: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def routes_to_worse_student(self) -> bool:
        return self.decision == "kept"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row_errors(config: FilterConfig, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the mean absolute error over dimensions, and the absolute error of the weighted average."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    dims = np.abs(pred - target).mean(axis=1) if len(pred) else np.zeros(0)
    wavg = np.asarray([abs(aggregate(config, p).weighted_average - aggregate(config, t).weighted_average)
                       for p, t in zip(pred, target, strict=True)], dtype=np.float64)
    return dims, wavg


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def routed_errors(config: FilterConfig, estimates: np.ndarray, threshold: float, probe: np.ndarray,
                  student: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MAEs of probe only, student only, and the cascade at ``threshold`` (the student's scores where
    the stage-1 estimate reaches it), with the share of rows escalated."""
    escalate = escalation_mask(threshold, estimates)
    routed = np.where(escalate[:, None], student, probe)
    out: dict[str, float] = {"n": float(len(target)), "escalated_share": _mean(escalate.astype(np.float64))}
    for name, pred in (("probe", probe), ("student", student), ("routed", routed)):
        dims, wavg = _row_errors(config, pred, target)
        out[f"{name}_mae"] = _mean(dims)
        out[f"{name}_wavg_mae"] = _mean(wavg)
    return out


def gate_student(config: FilterConfig, estimates: np.ndarray, probe: np.ndarray, student: np.ndarray,
                 target: np.ndarray, fn_threshold: float, *, keep: bool = False,
                 min_rows: int = MIN_ESCALATED_ROWS) -> Routing:
    """Decide the routing to the student from calibrated probe and student scores on the same rows.

    ``estimates`` are the probe's stage-1 estimates of those rows (what the pipeline compares with the
    threshold), ``fn_threshold`` the threshold the false-negative rule chose. The student must beat the
    probe overall (mean per-dimension MAE *and* weighted-average MAE) or stage 1 is final for all. If it
    does, the threshold is the one at or above ``fn_threshold`` that gains most (sum over escalated rows
    of probe error − student error, per-dimension mean): every band of estimates it leaves on stage 1
    costs nothing by going to the student, every band it escalates gains. It is never lowered below the
    false-negative rule's: that rule already decided what cost is worth paying. A band is left on stage 1
    only when the student is clearly worse there (mean gain below zero by more than its standard error,
    ``min_rows`` articles at least); ties keep the lower threshold. With ``keep`` the
    false-negative threshold stands whatever the comparison says (decision ``kept`` when it routes to a
    student that is not better)."""
    est = np.asarray(estimates, dtype=np.float64)
    probe = np.asarray(probe, dtype=np.float64)
    student = np.asarray(student, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if not (len(est) == len(probe) == len(student) == len(target)) or probe.shape != student.shape:
        raise ValueError(f"estimates {est.shape}, probe {probe.shape}, student {student.shape} and targets "
                         f"{target.shape} must describe the same rows")
    p_dims, p_wavg = _row_errors(config, probe, target)
    s_dims, s_wavg = _row_errors(config, student, target)
    probe_mae = {"mae": _mean(p_dims), "wavg_mae": _mean(p_wavg)}
    student_mae = {"mae": _mean(s_dims), "wavg_mae": _mean(s_wavg)}
    names = config.dimension_names
    probe_dims = {d: _mean(np.abs(probe[:, j] - target[:, j])) for j, d in enumerate(names)}
    student_dims = {d: _mean(np.abs(student[:, j] - target[:, j])) for j, d in enumerate(names)}
    better = (bool(len(est)) and student_mae["mae"] < probe_mae["mae"]
              and student_mae["wavg_mae"] < probe_mae["wavg_mae"])
    overall = (f"on {len(est)} calibration articles the student's MAE is {student_mae['mae']:.3f} (weighted average "
               f"{student_mae['wavg_mae']:.3f}), the probe's {probe_mae['mae']:.3f} "
               f"({probe_mae['wavg_mae']:.3f})")
    gain = p_dims - s_dims

    def result(decision: RoutingDecision, threshold: float, reason: str) -> Routing:
        up = escalation_mask(threshold, est)
        return Routing(decision=decision, threshold=round(threshold, 4), fn_threshold=fn_threshold, reason=reason,
                       n=len(est), probe=probe_mae, student=student_mae, probe_dims=probe_dims,
                       student_dims=student_dims, escalated=int(up.sum()), escalated_probe_mae=_mean(p_dims[up]),
                       escalated_student_mae=_mean(s_dims[up]), student_better=better)

    if keep:
        kept_reason = ("kept the false-negative threshold on request (--keep-student-routing): " + overall
                       + ("" if better else "; the student is NOT better"))
        return result("kept" if not better else "student", fn_threshold, kept_reason)
    if not better:
        return result("stage1", STAGE1_FINAL, f"stage 1 final for all: the student is not better than the probe "
                      f"({overall})")
    # Candidate thresholds: the false-negative rule's, and each observed estimate above it (escalate iff >=;
    # floored to 4 decimals so writing the value cannot move a row across it).
    candidates = sorted({fn_threshold, *(math.floor(v * 1e4) / 1e4 for v in est[est >= fn_threshold])})

    def total_gain(t: float) -> float | None:
        up = escalation_mask(t, est)
        return float(gain[up].sum()) if up.sum() >= min_rows else None

    base = total_gain(fn_threshold)
    best_t, best_gain = (fn_threshold, base) if base is not None and base > 0 else (None, 0.0)
    for t in candidates:
        g = total_gain(t)
        if g is not None and g > best_gain + 1e-12:  # strictly: an equal gain keeps the lower threshold
            best_t, best_gain = t, g
    if best_t is not None and best_t != fn_threshold and base is not None and base > 0:
        # The student helps above the false-negative threshold as a whole; raise it only when the band left
        # on stage 1 is clearly worse with the student (mean gain below zero by more than its standard
        # error, on enough rows), not on the noise of a few articles.
        band = gain[(est >= fn_threshold) & (est < best_t)]
        se = float(np.std(band, ddof=1) / math.sqrt(len(band))) if len(band) >= 2 else math.inf
        if len(band) < min_rows or float(band.mean()) + se >= 0:
            best_t = fn_threshold
    if best_t is None:
        return result("stage1", STAGE1_FINAL, f"stage 1 final for all: the student is better overall ({overall}) "
                      f"but not on the articles the probe would escalate (no threshold >= {fn_threshold:g} with "
                      f"at least {min_rows} calibration articles above it where it gains)")
    routing = result("student" if best_t == fn_threshold else "raised", best_t, "")
    where = (f"on the {routing.escalated} articles escalated (stage-1 estimate >= {best_t:g}) the student's MAE is "
             f"{routing.escalated_student_mae:.3f} against the probe's {routing.escalated_probe_mae:.3f}")
    routing.reason = (f"student routing kept: {overall}; {where}" if routing.decision == "student" else
                      f"threshold raised from {fn_threshold:g} to {best_t:g}, where the student helps: {overall}; "
                      f"{where}; below {best_t:g} it does not gain over the probe")
    return routing


_THRESHOLD_LINE = re.compile(r"^(?P<indent>[ \t]+)threshold:[ \t]*(?P<value>[^#\n]*?)(?P<rest>[ \t]*(#.*)?)$",
                             re.MULTILINE)


def write_threshold(package_dir: Path, value: float) -> Path:
    """Set ``stage1.threshold`` in the package's filter.yaml, leaving every other line (comments
    included) as it was; the result is re-validated before it replaces the file."""
    path = Path(package_dir) / CONFIG_NAME
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    in_stage1 = False
    replaced = False
    for i, line in enumerate(lines):
        if re.match(r"^stage1:\s*(#.*)?$", line):
            in_stage1 = True
            continue
        if in_stage1 and line and not line[0].isspace() and not line.startswith("#"):
            in_stage1 = False
        if in_stage1:
            match = _THRESHOLD_LINE.match(line)
            if match:
                lines[i] = f"{match['indent']}threshold: {value:g}{match['rest']}"
                replaced = True
                break
    if not replaced:
        raise PackageError(f"{path} has no stage1.threshold line to update", path=str(path))
    new_text = "\n".join(lines)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    try:
        config = load_config(tmp)
        if not math.isclose(config.stage1.threshold, value, abs_tol=1e-9):
            raise PackageError(f"{path}: threshold did not round-trip ({config.stage1.threshold} != {value})",
                               path=str(path))
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path
