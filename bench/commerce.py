"""Commerce detector benchmark: the detector's final verdict on real labelled articles, cross-validated.

    python -m bench commerce --data ../shared/data/commerce-labelled-dev.jsonl [--folds 5] [--repeats 3]

Rows of the table (precision, recall and F1 as mean ± sd over the held-out folds):

- **recipe, cross-validated**: for each fold of a stratified k-fold (repeated with other shuffles), the
  classifier of :mod:`training.commerce` is fitted on the synthetic families + the real training folds and
  the held-out real fold is scored by the detector's final verdict (rules first, then the classifier);
- **recipe without real rows**: the same recipe on synthetic data only, scored on the same folds;
- **rules only**: the rule score against ``rules_only_threshold`` (what runs without classifier files);
- **bundled detector**: the package in ``filters/commerce/v1`` as it is (when its classifier.json says it
  was trained on this very file, that row is in-sample and says so), and any ``--baseline DIR`` package.

"price-mentioning news" is the news items (label 0) whose text has a price (the rules' ``price`` group):
the row counts how many of them are blocked (each held-out verdict of every repeat, so an item counts once
per repeat), and gives precision on every article with a price. The
original system's figure (F1 0.978 on its own 190-article test split, not on this file) is printed beside.
One table; JSON to bench/results/ via bench.common.save.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table
from sklearn.model_selection import StratifiedKFold

from bench.common import Result, save
from scoring.commerce import DEFAULT_PATH, CommerceDetector, load_config
from scoring.text import article_text
from training.commerce import REAL_SHARE, Corpus, fit_in_memory, real_corpus, synthetic_corpus, verdicts
from training.steps import default_cache_dir

console = Console()
ORIGINAL_F1 = 0.978


def _prf(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    tp = int((pred & truth).sum())
    precision = tp / int(pred.sum()) if pred.any() else 1.0  # nothing blocked: no false blocks
    recall = tp / int(truth.sum()) if truth.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class Tally:
    """Per-fold figures of one method, and its pooled verdicts for the price-news subset."""

    def __init__(self, name: str, note: str = "") -> None:
        self.name, self.note = name, note
        self.folds: list[tuple[float, float, float]] = []
        self.blocked_price_news = 0
        self.price_news = 0
        self.price_tp = 0
        self.price_blocked = 0

    def add(self, truth: np.ndarray, pred: np.ndarray, has_price: np.ndarray) -> None:
        self.folds.append(_prf(truth, pred))
        news = has_price & ~truth
        self.price_news += int(news.sum())
        self.blocked_price_news += int((news & pred).sum())
        self.price_blocked += int((has_price & pred).sum())
        self.price_tp += int((has_price & pred & truth).sum())

    def summary(self) -> dict[str, Any]:
        cols = list(zip(*self.folds, strict=True))

        def stat(values: tuple[float, ...]) -> dict[str, float]:
            return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

        return {"precision": stat(cols[0]), "recall": stat(cols[1]), "f1": stat(cols[2]), "folds": len(self.folds),
                "price_news_blocked": self.blocked_price_news, "price_news": self.price_news,
                "precision_with_price": self.price_tp / self.price_blocked if self.price_blocked else 1.0,
                "note": self.note}


def run(data: Path, *, folds: int, repeats: int, seed: int, real_share: float, baselines: list[Path],
        device: str, cache_dir: Path | None) -> dict[str, Any]:
    start = time.perf_counter()
    config = load_config(DEFAULT_PATH)
    rules = CommerceDetector(config, DEFAULT_PATH.resolve())  # the bundled rules, no classifier
    real = real_corpus(config, data, device=device, cache_dir=cache_dir)
    synthetic = synthetic_corpus(config, seed=seed, device=device, cache_dir=cache_dir)
    truth = real.labels.astype(bool)
    evidence = [rules.evidence(a, article_text(a)) for a in real.articles]
    has_price = np.asarray([any(r.startswith("price:") for r in e.reasons) for e in evidence])
    rules_pred = np.asarray([e.rule_score >= config.rules_only_threshold for e in evidence])
    synthetic_only = verdicts(fit_in_memory(rules, synthetic, seed=seed), real.articles, real.embeddings)

    fixed: list[tuple[Tally, np.ndarray]] = [
        (Tally("recipe without real rows", "synthetic only"), synthetic_only),
        (Tally("rules only", f"rule score >= {config.rules_only_threshold:g}"), rules_pred)]
    for path in [DEFAULT_PATH, *baselines]:
        detector = CommerceDetector.load(path)
        trained_on = [d.get("source") for d in (detector.meta.model_extra or {}).get("training_data", [])
                      ] if detector.meta is not None else []
        note = f"{detector.mode}; " + ("IN-SAMPLE: trained on this file" if data.name in trained_on
                                       else "not trained on this file")
        name = "bundled detector" if path == DEFAULT_PATH else f"baseline {path}"
        fixed.append((Tally(name, note), verdicts(detector, real.articles, real.embeddings)))

    recipe = Tally("recipe, cross-validated", f"synthetic + real training folds, real_share={real_share:g}")
    for repeat in range(repeats):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for train, test in splitter.split(np.zeros(len(truth)), truth):
            detector = fit_in_memory(rules, synthetic + real.subset(train), seed=seed, real_share=real_share)
            held: Corpus = real.subset(test)
            recipe.add(truth[test], verdicts(detector, held.articles, held.embeddings), has_price[test])
            for tally, pred in fixed:
                tally.add(truth[test], pred[test], has_price[test])
    methods = {t.name: t.summary() for t in [recipe] + [t for t, _ in fixed]}
    return {"data": str(data), "articles": len(truth), "commerce": int(truth.sum()),
            "synthetic_rows": len(synthetic.articles), "synthetic_commerce": int(synthetic.labels.sum()),
            "folds": folds, "repeats": repeats, "seed": seed, "real_share": real_share,
            "embedding_model": config.embedding_model, "original_f1": ORIGINAL_F1, "methods": methods,
            "seconds": round(time.perf_counter() - start, 1)}


def table(result: dict[str, Any]) -> Table:
    out = Table(title=f"commerce detector on {result['data']} ({result['articles']} articles, "
                      f"{result['commerce']} commerce; {result['folds']}-fold x {result['repeats']})")
    for col in ("method", "precision", "recall", "F1", "price-news blocked (all repeats)", "precision (with price)",
                "notes"):
        out.add_column(col, justify="left" if col in ("method", "notes") else "right")
    for name, m in result["methods"].items():
        out.add_row(name, *(f"{m[k]['mean']:.3f} ± {m[k]['sd']:.3f}" for k in ("precision", "recall", "f1")),
                    f"{m['price_news_blocked']}/{m['price_news']}", f"{m['precision_with_price']:.3f}", m["note"])
    out.add_row("original system", "–", "–", f"{ORIGINAL_F1:.3f}", "–", "–", "its own 190-article test split")
    return out


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m bench commerce",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL (field label: 1/0)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="k-fold repeats with other shuffles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-share", type=float, default=REAL_SHARE)
    parser.add_argument("--baseline", type=Path, action="append", default=[], metavar="DIR",
                        help="another commerce package to score beside the bundled one (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=None,
                        help="embedding cache directory (default: the training cache)")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data {args.data} does not exist")
    if args.folds < 2 or args.repeats < 1:
        parser.error("--folds must be at least 2 and --repeats at least 1")
    console.print(f"reading labelled articles from {args.data} (benchmark only; nothing is copied)")
    result = run(args.data, folds=args.folds, repeats=args.repeats, seed=args.seed, real_share=args.real_share,
                 baselines=args.baseline, device=args.device, cache_dir=args.cache or default_cache_dir())
    console.print(table(result))
    ours = result["methods"]["recipe, cross-validated"]
    console.print(f"cross-validated F1 {ours['f1']['mean']:.3f} ± {ours['f1']['sd']:.3f} (original system: "
                  f"{ORIGINAL_F1} on its own split); precision {ours['precision']['mean']:.3f}; "
                  f"price-mentioning news blocked {ours['price_news_blocked']}/{ours['price_news']}")
    rows = [Result(benchmark="commerce", case=name, items_per_s=0.0, items=result["articles"],
                   seconds=result["seconds"], unit="articles",
                   extra={"precision": round(m["precision"]["mean"], 4), "recall": round(m["recall"]["mean"], 4),
                          "f1": round(m["f1"]["mean"], 4)})
            for name, m in result["methods"].items()]
    path = save("commerce", rows, meta=result)
    console.print(f"results: {path}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
