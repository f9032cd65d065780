"""One drift report: a window of one filter's records against its reference, with Evidently 0.7.

The report holds Evidently's per-column drift test (``ValueDrift``) of every watched column — weighted
average, each calibrated dimension, text length, tier, stage, the prefilter's verdict, language — and,
when both sides have stage-1 embeddings, Evidently's ``EmbeddingsDrift`` (a classifier telling current
from reference embeddings; its ROC AUC is the score). Embeddings come from a sample of articles, not from
every record, so they are a dataset of their own: the two Evidently runs are joined into one snapshot
(Evidently's own serialisation model, so ``Snapshot.load`` and ``evidently ui`` read it like any other),
headed by a summary of the reference used, the window and the alerts.

:func:`evaluate_window` is pure (no I/O); the monitor runs it in a thread.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from scoring.drift import CATEGORICAL, Row, numeric_columns
from scoring.package import DriftAlerts
from streams.drift.alerts import Alert, evaluate, rates

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

# A column enters a drift test only when both windows hold this many values of it (Evidently refuses
# empty columns, and a test over a handful of values says nothing).
MIN_VALUES = 20
EMBEDDINGS = "stage1"
ReferenceKind = Literal["package", "file", "window"]
REFERENCE_LABELS: dict[str, str] = {"package": "package profile", "file": "reference file",
                                    "window": "pinned production window"}


@dataclass
class Reference:
    """What a filter's windows are compared with, and where it came from (the report says which)."""

    kind: ReferenceKind
    detail: str
    rows: list[Row] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # projected (scoring.drift.project)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": REFERENCE_LABELS[self.kind], "detail": self.detail,
                "rows": len(self.rows), "embeddings": 0 if self.embeddings is None else len(self.embeddings)}


@dataclass
class WindowInputs:
    """Everything one report needs, copied out of the live windows (so the stream can go on meanwhile)."""

    filter: str
    version: str
    package_hash: str
    seq: int
    trigger: str  # "count", "time" or "offline"
    reference: Reference
    rows: list[Row]
    new_rows: int
    thresholds: DriftAlerts
    embeddings: np.ndarray | None = None
    embedding_note: str | None = None  # why there is no embedding drift, when there is none
    first_seen: datetime | None = None


@dataclass
class DriftResult:
    summary: dict[str, Any]
    alerts: list[Alert]
    snapshot: Snapshot | None = None

    @property
    def name(self) -> str:
        return f"{self.summary['filter']}@{self.summary['version']} window {self.summary['window']['seq']}"


def _frames(ref: Sequence[Row], cur: Sequence[Row]) -> tuple[Any, Any, list[str], list[str]]:
    import pandas as pd

    ref_df, cur_df = pd.DataFrame(list(ref)), pd.DataFrame(list(cur))

    def enough(col: str) -> bool:
        return (col in ref_df.columns and col in cur_df.columns and int(ref_df[col].notna().sum()) >= MIN_VALUES
                and int(cur_df[col].notna().sum()) >= MIN_VALUES)

    numeric = [c for c in numeric_columns([*ref, *cur]) if enough(c)]
    # A category column with one value on both sides (every record passed, every language unknown) has
    # nothing to test.
    categorical = [c for c in CATEGORICAL if enough(c)
                   and len(set(ref_df[c].dropna().astype(str)) | set(cur_df[c].dropna().astype(str))) > 1]
    for col in numeric:
        ref_df[col] = pd.to_numeric(ref_df[col], errors="coerce").astype(float)
        cur_df[col] = pd.to_numeric(cur_df[col], errors="coerce").astype(float)
    for col in categorical:
        ref_df[col] = ref_df[col].astype(str)
        cur_df[col] = cur_df[col].astype(str)
    return ref_df, cur_df, numeric, categorical


def _column_results(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if "column" not in config:
            continue
        value = float(metric["value"])
        method, threshold = str(config["method"]), float(config["threshold"])
        # p-value tests drift below the threshold; distance measures (large windows) above it.
        drifted = value < threshold if "p_value" in method else value >= threshold
        results[str(config["column"])] = {"method": method, "threshold": threshold,
                                          "value": None if math.isnan(value) else round(value, 6),
                                          "drifted": bool(drifted)}
    return results


def _shares(rows: Sequence[Row], column: str) -> dict[str, float]:
    counts = Counter(str(r.get(column)) for r in rows if r.get(column) is not None)
    total = sum(counts.values())
    return {k: round(v / total, 4) for k, v in sorted(counts.items())} if total else {}


def _header_widgets(summary: dict[str, Any], alerts: list[Alert]) -> list[Any]:
    from evidently.legacy.renderers.html_widgets import CounterData, counter, table_data

    ref, window = summary["reference"], summary["window"]
    status = summary["status"].upper()
    widgets = [counter(title=f"fluxscore drift — {summary['filter']}@{summary['version']} "
                             f"(package {summary['package_hash']})",
                       counters=[CounterData("status", status), CounterData("reference", ref["kind"]),
                                 CounterData(f"window ({window['trigger']})", f"#{window['seq']}"),
                                 CounterData("alerts", str(len(alerts)))])]
    widgets.append(table_data(title=f"Reference: {ref['label']} ({ref['rows']} rows, {ref['embeddings']} "
                                    f"embeddings) — {ref['detail']}",
                              column_names=["statistic", "reference", "current"],
                              data=[[k, _fmt(summary["rates"]["reference"].get(k)),
                                     _fmt(summary["rates"]["current"].get(k))]
                                    for k in summary["rates"]["current"]]))
    if alerts:
        widgets.append(table_data(title="Alerts", column_names=["rule", "severity", "what"],
                                  data=[[a.rule, a.severity, a.message] for a in alerts]))
    return widgets


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_columns(ref_df: Any, cur_df: Any, numeric: list[str], categorical: list[str]) -> Snapshot:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    columns = numeric + categorical
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    with warnings.catch_warnings():
        # A category the reference lacks (a new language) divides by zero in the chi-square test; its
        # p-value of 0 is the answer wanted, the warning only noise in the worker's log.
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report([ValueDrift(column=c) for c in columns]).run(
            current_data=Dataset.from_pandas(cur_df[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(ref_df[columns], data_definition=definition))


def _run_embeddings(ref: np.ndarray, cur: np.ndarray, threshold: float) -> Snapshot:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    cols = [f"e{i}" for i in range(ref.shape[1])]
    definition = DataDefinition(numerical_columns=cols, embeddings={EMBEDDINGS: cols})
    # Evidently's default method (a classifier's ROC AUC) with the filter's alert threshold, so the
    # report's "drift detected" and the alert agree.
    return Report([EmbeddingsDrift(embeddings_name=EMBEDDINGS, drift_method=ModelDriftMethod(threshold=threshold))]
                  ).run(current_data=Dataset.from_pandas(pd.DataFrame(cur, columns=cols), data_definition=definition),
                        reference_data=Dataset.from_pandas(pd.DataFrame(ref, columns=cols),
                                                           data_definition=definition))


def _join(parts: list[Snapshot], header: list[Any], *, name: str, metadata: dict[str, Any],
          tags: list[str]) -> Snapshot:
    """One snapshot from several Evidently runs, through Evidently's own serialisation model."""
    from evidently.core.report import Snapshot

    body = parts[0].dump_dict()
    for extra in parts[1:]:
        more = extra.dump_dict()
        body["metric_results"] = {**body["metric_results"], **more["metric_results"]}
        body["top_level_metrics"] = [*body["top_level_metrics"], *more["top_level_metrics"]]
        body["widgets"] = [*body["widgets"], *more["widgets"]]
        body["tests_widgets"] = [*body["tests_widgets"], *more["tests_widgets"]]
    body["widgets"] = [*header, *body["widgets"]]
    body["name"], body["metadata"], body["tags"] = name, metadata, tags
    return Snapshot.load_dict(body)


def evaluate_window(inputs: WindowInputs, *, with_snapshot: bool = True) -> DriftResult:
    """The report of one window: Evidently's tests, the alert rules, the JSON summary and the snapshot."""
    ref_rows, cur_rows = inputs.reference.rows, inputs.rows
    ref_df, cur_df, numeric, categorical = _frames(ref_rows, cur_rows)
    columns_snapshot = _run_columns(ref_df, cur_df, numeric, categorical) if numeric + categorical else None
    columns = _column_results(columns_snapshot) if columns_snapshot is not None else {}
    drifted_share = sum(r["drifted"] for r in columns.values()) / len(columns) if columns else 0.0

    embedding: dict[str, Any] = {"available": False, "note": inputs.embedding_note}
    embeddings_snapshot = None
    ref_emb, cur_emb = inputs.reference.embeddings, inputs.embeddings
    if ref_emb is not None and cur_emb is not None:
        if len(ref_emb) >= MIN_VALUES and len(cur_emb) >= MIN_VALUES and ref_emb.shape[1] == cur_emb.shape[1]:
            embeddings_snapshot = _run_embeddings(ref_emb, cur_emb, inputs.thresholds.embedding_drift)
            metric = next(m for m in embeddings_snapshot.dict()["metrics"] if "embeddings_name" in m["config"])
            score = float(metric["value"])
            embedding = {"available": True, "method": "model (ROC AUC)", "score": round(score, 6),
                         "threshold": inputs.thresholds.embedding_drift,
                         "drifted": score >= inputs.thresholds.embedding_drift,
                         "reference_rows": len(ref_emb), "current_rows": len(cur_emb)}
        else:
            embedding["note"] = (f"too few embeddings ({len(ref_emb)} reference, {len(cur_emb)} current; "
                                 f"need {MIN_VALUES} each)")
    # For the alert, a p-value test counts only below the rules' significance: the watched columns are
    # correlated (dimensions, weighted average, tier), so at Evidently's 5 % they cross together by chance.
    sig = inputs.thresholds.significance
    strict = [r["drifted"] and (r["value"] is not None and r["value"] < sig if "p_value" in r["method"] else True)
              for r in columns.values()]
    alerts = evaluate(ref_rows, cur_rows, inputs.thresholds,
                      embedding_score=embedding.get("score") if embedding["available"] else None,
                      drifted_share=sum(strict) / len(strict) if strict else None)
    status = "critical" if any(a.severity == "critical" for a in alerts) else "alert" if alerts else "ok"
    now = datetime.now(UTC)
    summary: dict[str, Any] = {
        "filter": inputs.filter, "version": inputs.version, "package_hash": inputs.package_hash,
        "status": status, "reference": inputs.reference.describe(),
        "window": {"seq": inputs.seq, "rows": len(cur_rows), "new_rows": inputs.new_rows,
                   "trigger": inputs.trigger},
        "reference_rows": len(ref_rows), "current_rows": len(cur_rows), "columns": columns,
        "drifted_share": round(drifted_share, 4), "drift_detected": drifted_share >= 0.5,
        "embeddings": embedding,
        "rates": {"reference": rates(ref_rows), "current": rates(cur_rows)},
        "current_share": {col: _shares(cur_rows, col) for col in CATEGORICAL},
        "alerts": [a.as_dict() for a in alerts], "evaluated_at": now.isoformat()}
    snapshot = None
    if with_snapshot:
        parts = [p for p in (columns_snapshot, embeddings_snapshot) if p is not None]
        if parts:
            snapshot = _join(parts, _header_widgets(summary, alerts), name=(
                f"{inputs.filter}@{inputs.version} window {inputs.seq}"), metadata={
                "filter": inputs.filter, "version": inputs.version, "package_hash": inputs.package_hash,
                "reference": inputs.reference.kind, "status": status, "window": str(inputs.seq)},
                tags=["fluxscore", inputs.filter, f"reference:{inputs.reference.kind}", f"status:{status}"])
    return DriftResult(summary=summary, alerts=alerts, snapshot=snapshot)
