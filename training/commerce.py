"""Training of the commerce classifier: logistic regression over [embedding, rule features].

The scaler is folded into the weights, so serving is one dot product on raw inputs. Weights go to
safetensors (``coef``, ``intercept``), everything else to JSON — no pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from safetensors.numpy import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from scoring.article import Article, validate_article
from scoring.commerce import CLASSIFIER_FORMAT, CommerceDetector, load_config, prepare_embeddings
from scoring.text import article_text
from training.exceptions import TrainingDataError

MIN_PER_CLASS = 4


def rule_features(detector: CommerceDetector, articles: Sequence[Article]) -> np.ndarray:
    """The rule-feature block of the classifier input, computed as serving computes it."""
    return np.asarray([detector.evidence(a, article_text(a)).features for a in articles], dtype=np.float64)


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    """Standardise, fit, and fold the scaler into (coef, intercept) for raw inputs."""
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    model.fit(scaler.transform(x), y)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    coef = model.coef_.reshape(-1) / scale
    intercept = float(model.intercept_[0] - np.dot(coef, scaler.mean_))
    return coef, intercept


def _metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    pred = probs >= threshold
    out = {
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, pred)),
    }
    if len(set(y_true.tolist())) == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, probs))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fit_commerce(articles: Sequence[Article], labels: Sequence[bool], embeddings: np.ndarray,
                 detector_dir: Path, *, C: float = 1.0, seed: int = 0,
                 test_size: float = 0.25) -> dict[str, Any]:
    """Fit the classifier, write ``classifier.safetensors`` + ``classifier.json`` into ``detector_dir``.

    ``detector_dir`` must hold the ``commerce.yaml`` whose rules make the features. Metrics are from a
    stratified held-out split; the written weights are then refit on all rows with the same settings.
    Returns the metrics (also stored in the JSON).
    """
    detector_dir = Path(detector_dir).resolve()
    # Rules only: an old classifier there may no longer fit the rules it is being retrained for.
    detector = CommerceDetector(load_config(detector_dir), detector_dir)
    y = np.asarray([bool(v) for v in labels], dtype=np.int64)
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(articles) or len(y) != len(articles):
        raise TrainingDataError(f"{len(articles)} articles, {len(y)} labels and embeddings of shape "
                                f"{emb.shape} do not line up", filter="commerce", step="fit")
    if not np.all(np.isfinite(emb)):
        raise TrainingDataError("embeddings hold NaN or infinite values", filter="commerce", step="fit")
    counts = {"commerce": int(y.sum()), "other": int(len(y) - y.sum())}
    if min(counts.values()) < MIN_PER_CLASS:
        raise TrainingDataError(f"need at least {MIN_PER_CLASS} examples of each class, have {counts}",
                                filter="commerce", step="fit")

    x = np.hstack([prepare_embeddings(emb, True), rule_features(detector, articles)])
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y,
                                           random_state=seed)
    coef, intercept = _fit(x[idx_train], y[idx_train], C, seed)
    probs = 1.0 / (1.0 + np.exp(-(x[idx_test] @ coef + intercept)))
    metrics: dict[str, Any] = {**_metrics(y[idx_test], probs, detector.config.threshold),
                               "threshold": detector.config.threshold, "n_train": len(idx_train),
                               "n_test": len(idx_test), "counts": counts}

    coef, intercept = _fit(x, y, C, seed)
    meta = {
        "format": CLASSIFIER_FORMAT,
        "embedding_model": detector.embedding_model,
        "embedding_dim": int(emb.shape[1]),
        "feature_names": detector.feature_names,
        "normalize_embedding": True,
        "rules_version": detector.config.version,
        "C": C,
        "seed": seed,
        "n_rows": len(y),
        "metrics": metrics,
        "metrics_note": "held-out split of a fit on the rest; the stored weights are refit on all rows",
    }
    weights_path = detector_dir / detector.config.classifier
    meta_path = detector_dir / detector.config.classifier_meta
    tensors = {"coef": coef.astype(np.float32), "intercept": np.asarray([intercept], dtype=np.float32)}
    with tempfile.TemporaryDirectory(dir=detector_dir) as tmp:
        tmp_weights = Path(tmp) / "w.safetensors"
        save_file(tensors, str(tmp_weights), metadata={"format": CLASSIFIER_FORMAT})
        os.replace(tmp_weights, weights_path)
    _write_atomic(meta_path, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())
    return metrics


def load_labelled_jsonl(path: Path, *, label_field: str = "is_commerce") -> tuple[list[Article], list[bool]]:
    """Articles and labels from JSON lines: each line an article with a boolean ``label_field``."""
    articles: list[Article] = []
    labels: list[bool] = []
    with Path(path).open("rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}:{line_no}: not JSON: {exc}", filter="commerce") from None
            if not isinstance(record, dict):
                raise TrainingDataError(f"{path}:{line_no}: not a JSON object", filter="commerce")
            label = record.pop(label_field, None)
            if not isinstance(label, bool):
                raise TrainingDataError(f"{path}:{line_no}: {label_field!r} must be true or false, "
                                        f"got {label!r}", filter="commerce")
            articles.append(validate_article(record))
            labels.append(label)
    return articles, labels
