"""What the drift monitor costs per 1,000 score records, and that its memory stays bounded.

    python -m bench monitor [--records 3000] [--window 500] [--every 250] [--sample 64]

The records are the demo package's (its installed version, so the monitor finds the package and its
reference profile, as a worker would), with scores, stages, languages and text lengths drawn from a fixed
seed; their article texts come from the bundled sample articles. Cases, each over the same records:

1. windows only: parsing nothing, the repeat filter and the windows (no report due);
2. + a report every ``--every`` records: Evidently's column drift tests and the alert rules;
3. + each report written as self-contained HTML, an Evidently snapshot and the JSON summary;
4. + embedding drift: ``--sample`` sampled articles re-embedded per window with the package's encoder
   (MiniLM on the CPU here, no embedding cache), Evidently's embedding drift;
5. memory: traced Python memory after 100,000, 400,000 and 700,000 records (windows only): it grows with
   the repeat filter up to its 200,000 keys, then stays flat.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import Result, print_results, save
from scoring.aggregate import Tier
from scoring.package import resolve, search_roots
from scoring.records import DimensionScore, FilterRef, InputStats, PrefilterResult, ScoreRecord, StageUsed

SAMPLE = Path(__file__).resolve().parent.parent / "scoring" / "data" / "sample_articles.jsonl"


def records(n: int, ref: FilterRef, dims: list[str], *, seed: int = 0, start: int = 0) -> list[ScoreRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        value = float(np.clip(rng.normal(3.7, 1.3), 0, 10))
        draw = rng.random()
        stage = (StageUsed.PREFILTER if draw < 0.08 else StageUsed.COMMERCE if draw < 0.18
                 else StageUsed.STAGE2 if rng.random() < 0.8 else StageUsed.STAGE1)
        scored = stage in (StageUsed.STAGE1, StageUsed.STAGE2)
        out.append(ScoreRecord(
            article_id=f"bench-{start + i}", filter=ref, model_hashes={}, stage=stage,
            weighted_average=round(value, 4) if scored else 0.0,
            tier=(Tier.MEDIUM if value >= 4 else Tier.LOW) if scored else Tier.LOW,
            dimensions={d: DimensionScore(raw=value, calibrated=round(float(np.clip(value + rng.normal(0, 1), 0, 10)),
                                                                       4)) for d in dims} if scored else {},
            prefilter=PrefilterResult(passed=stage != StageUsed.PREFILTER),
            input=InputStats(text_chars=int(rng.integers(300, 3000)),
                             language=str(rng.choice(["en", "nl", "de", "fr", "es"], p=[.5, .2, .1, .1, .1])))))
    return out


def sample_texts() -> list[str]:
    from scoring.article import parse_article
    from scoring.text import article_text

    return [article_text(parse_article(line)) for line in SAMPLE.read_bytes().splitlines() if line.strip()]


def run_case(stream: list[ScoreRecord], texts: list[str], *, window: int, every: int, sample: int,
             store_dir: Path | None, embed: bool) -> tuple[float, int]:
    from scoring.settings import ScoringSettings
    from streams.drift.store import ReportStore
    from streams.drift.windows import DriftTracker, package_lookup, stage1_embedder

    tracker = DriftTracker(reference_size=500, window=window, every=every, sample_size=sample if embed else 0,
                           lookup=package_lookup(search_roots([])),
                           embedder=stage1_embedder(ScoringSettings.from_env()) if embed else None)
    store = ReportStore(store_dir) if store_dir is not None else None
    reports = 0
    started = time.perf_counter()
    for i, record in enumerate(stream):
        tracker.add(record)
        if embed:
            tracker.add_text([record.filter.name], texts[i % len(texts)])
        for name, trigger in tracker.due():
            result = tracker.run(tracker.take(name, trigger), with_snapshot=store is not None)
            if store is not None:
                store.save(result)
            reports += 1
    return time.perf_counter() - started, reports


def memory_case(ref: FilterRef, dims: list[str]) -> dict[str, float]:
    from streams.drift.windows import DriftTracker

    tracker = DriftTracker(reference_size=500, window=500, every=10**9)
    out: dict[str, float] = {}
    tracemalloc.start()
    try:
        done = 0
        for mark in (100_000, 400_000, 700_000):
            while done < mark:
                batch = records(5_000, ref, dims, seed=done, start=done)
                for record in batch:
                    tracker.add(record)
                done += len(batch)
                del batch
            out[f"traced_mb_at_{mark // 1000}k"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
    finally:
        tracemalloc.stop()
    return out


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--sample", type=int, default=64)
    parser.add_argument("--filter", default="demo")
    args = parser.parse_args(argv)

    package = resolve(args.filter)
    ref = FilterRef(name=package.name, version=package.version, package_hash=package.package_hash)
    dims = package.config.dimension_names
    stream = records(args.records, ref, dims)
    texts = sample_texts()
    print(f"{len(stream)} records of {package.ref} (reference: "
          f"{'package profile' if package.config.drift.reference else 'first 500 records'}); window {args.window}, "
          f"report every {args.every}, {args.sample} articles embedded per window in case 4")
    results: list[Result] = []

    def add(case: str, seconds: float, reports: int, **extra: object) -> None:
        n = len(stream)
        results.append(Result("monitor", case, n / seconds, n, seconds, unit="records",
                              extra={"ms_per_1000": round(seconds / n * 1e6, 1), "reports": reports, **extra}))

    seconds, reports = run_case(stream, texts, window=args.window, every=10**9, sample=0, store_dir=None,
                                embed=False)
    add("windows only (no report due)", seconds, reports)
    # Warm-up: Evidently's and scipy's imports and first calls are not the monitor's steady cost.
    run_case(stream[:800], texts, window=args.window, every=args.every, sample=0, store_dir=None, embed=False)
    seconds, reports = run_case(stream, texts, window=args.window, every=args.every, sample=0, store_dir=None,
                                embed=False)
    add(f"+ report every {args.every}: Evidently column tests + alerts", seconds, reports)
    with tempfile.TemporaryDirectory(prefix="fluxscore-bench-monitor-") as tmp:
        seconds, reports = run_case(stream, texts, window=args.window, every=args.every, sample=0,
                                    store_dir=Path(tmp), embed=False)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        add("+ HTML, snapshot and summary written", seconds, reports, mb_per_report=round(size / reports / 2**20, 2))
        run_case(stream[:800], texts, window=args.window, every=args.every, sample=args.sample,
                 store_dir=None, embed=True)
        seconds, reports = run_case(stream, texts, window=args.window, every=args.every, sample=args.sample,
                                    store_dir=Path(tmp) / "emb", embed=True)
        add(f"+ embedding drift ({args.sample} articles re-embedded per window)", seconds, reports)
    memory = memory_case(ref, dims)
    results.append(Result("monitor", "memory: 700,000 records, windows only", 0.0, 700_000, 0.0, unit="records",
                          extra=memory))
    path = save("monitor", results, {"records": len(stream), "window": args.window, "every": args.every,
                                     "sample": args.sample, "filter": package.ref})
    print_results(results, "drift monitor cost", path)
    return results


if __name__ == "__main__":
    main()
