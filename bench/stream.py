"""Streaming overhead and scale-out: articles/s through the broker vs the same scorer in-process.

    python -m bench stream [--articles 1000] [--data FILE.jsonl] [--skip-scale]

1. In-process: ``Pipeline.score`` over the articles in batches (the ``fluxscore score`` path).
2. Through Kafka: one worker (all roles) on the embedded Tansu broker + Redis (or the cluster that
   ``KAFKA_BOOTSTRAP``/``REDIS_URL`` name), from publishing the first article to the last record.
   Ratio = (2) / (1); target >= 0.90.
3. Scale-out: two workers against one on 4 partitions; target >= 1.8x.

Workers are warmed up (models loaded, partitions assigned, one small batch scored) before timing, as
the in-process run is timed after loading. Results print as a table and are saved as JSON under
``bench/results/stream-<time>.json`` (through :mod:`bench.common`). Input: synthetic articles
(training/synth.py) unless ``--data`` names a JSONL file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import Result, print_results, save  # noqa: E402
from scoring.article import parse_article  # noqa: E402
from scoring.package import resolve  # noqa: E402
from scoring.pipeline import Pipeline  # noqa: E402
from scoring.settings import ScoringSettings  # noqa: E402
from streams.embedded import EmbeddedBroker, EmbeddedRedis  # noqa: E402
from streams.kafka import make_consumer, produce_file  # noqa: E402

console = Console()
TANSU_ENV = {"FLUXSCORE_PRODUCER_MAX_BATCH_BYTES": "1", "FLUXSCORE_SESSION_TIMEOUT": "3",
             "FLUXSCORE_HEARTBEAT_INTERVAL": "0.5", "FLUXSCORE_REBALANCE_TIMEOUT": "6"}


def load_lines(n: int, data: Path | None) -> list[bytes]:
    if data is not None:
        lines = [ln for ln in data.read_bytes().splitlines() if ln.strip()]
        if len(lines) < n:
            lines = (lines * (n // len(lines) + 1))[:n]
            # Repeats need their own ids, or idempotency would (rightly) skip them.
            lines = [orjson.dumps({**orjson.loads(ln), "id": f"{orjson.loads(ln)['id']}#{i}"})
                     for i, ln in enumerate(lines)]
        return lines[:n]
    from training.synth import SynthConfig, generate, strip_labels

    return [orjson.dumps(strip_labels(r)) for r in generate(SynthConfig(n=n, seed=2024))]


def in_process(lines: list[bytes], filters: list[str], batch: int) -> dict[str, Any]:
    started = time.perf_counter()
    pipeline = Pipeline.load(filters, settings=ScoringSettings.from_env())
    load_s = time.perf_counter() - started
    articles = [parse_article(line) for line in lines]
    pipeline.score(articles[:batch])  # warm-up, like the workers' warm-up batch
    start = time.perf_counter()
    records = 0
    for i in range(0, len(articles), batch):
        records += len(pipeline.score(articles[i:i + batch]))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "articles_per_s": round(len(articles) / seconds, 2), "records": records,
            "load_seconds": round(load_s, 2), "batch": batch}


@dataclass
class Cluster:
    bootstrap: str
    redis: str
    broker: EmbeddedBroker | None
    redis_server: EmbeddedRedis | None

    def stop(self) -> None:
        if self.redis_server is not None:
            self.redis_server.cleanup()
        if self.broker is not None:
            self.broker.stop()


def cluster(run_dir: Path) -> Cluster:
    from streams.settings import StreamSettings

    given = StreamSettings.from_env()
    bootstrap, redis = given.kafka_bootstrap, given.redis_url
    broker = None if bootstrap else EmbeddedBroker(log_path=run_dir / "tansu.log").start()
    server = None if redis else EmbeddedRedis(directory=run_dir).start()
    return Cluster(bootstrap or (broker.bootstrap if broker else ""), redis or (server.url if server else ""),
                   broker, server)


async def _wait_records(bootstrap: str, topic: str, want: set[str], n_filters: int, timeout: float) -> float:
    """Seconds until every article id in ``want`` has ``n_filters`` records (or dead letters count once)."""
    consumer = make_consumer(bootstrap, topic)
    await consumer.start()
    seen: dict[str, int] = {}
    done = 0
    deadline = time.monotonic() + timeout
    try:
        while done < len(want):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done}/{len(want)} articles complete after {timeout} s")
            for messages in (await consumer.getmany(timeout_ms=200, max_records=2000)).values():
                for msg in messages:
                    article = msg.key.decode()  # score messages are keyed by article id
                    if article in want:
                        seen[article] = seen.get(article, 0) + 1
                        if seen[article] == n_filters:
                            done += 1
    finally:
        await consumer.stop()
    return time.perf_counter()


def _wait_assigned(logs: list[Path], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = 0
        for path in logs:
            text = path.read_text(errors="replace") if path.exists() else ""
            ready += '"partitions assigned"' in text and '.articles.raw:' in text.rsplit('"partitions assigned"', 1)[-1]
        if ready == len(logs):
            return
        time.sleep(0.5)
    raise TimeoutError("workers did not get partitions")


def through_broker(lines: list[bytes], filters: list[str], n_workers: int, partitions: int, run_dir: Path,
                   extra_env: dict[str, str]) -> dict[str, Any]:
    c = cluster(run_dir)
    prefix = f"bench{n_workers}-{int(time.time())}."
    env = {**os.environ, **(TANSU_ENV if c.broker else {}), **extra_env,
           "FLUXSCORE_KAFKA_BOOTSTRAP": c.bootstrap, "FLUXSCORE_REDIS_URL": c.redis, "FLUXSCORE_TOPIC_PREFIX": prefix,
           "FLUXSCORE_APP_ID": f"bench-{prefix}", "FLUXSCORE_REDIS_PREFIX": f"bench-{prefix}",
           "FLUXSCORE_PARTITIONS": str(partitions), "FLUXSCORE_FILTERS": ",".join(filters),
           "FLUXSCORE_METRICS_PORT": "off", "FLUXSCORE_RELOAD_INTERVAL": "0", "FLUXSCORE_LOG_FORMAT": "json"}
    procs: list[subprocess.Popen[bytes]] = []
    logs = [run_dir / f"{prefix}worker{i}.log" for i in range(n_workers)]
    raw, scores = prefix + "articles.raw", prefix + "scores.all"
    try:
        for log in logs:
            procs.append(subprocess.Popen([sys.executable, "-m", "streams", "worker", "--role", "all"], cwd=REPO,
                                          env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb")))
        warm = [orjson.dumps({**orjson.loads(ln), "id": f"warmup-{i}"}) for i, ln in enumerate(lines[:64])]
        warm_path, main_path = run_dir / f"{prefix}warm.jsonl", run_dir / f"{prefix}main.jsonl"
        warm_path.write_bytes(b"\n".join(warm) + b"\n")
        main_path.write_bytes(b"\n".join(lines) + b"\n")
        batch_bytes = int(env.get("FLUXSCORE_PRODUCER_MAX_BATCH_BYTES", "16384"))
        asyncio.run(produce_file(warm_path, c.bootstrap, raw, partitions=partitions, max_batch_bytes=batch_bytes))
        _wait_assigned(logs)
        asyncio.run(_wait_records(c.bootstrap, scores, {f"warmup-{i}" for i in range(len(warm))}, len(filters), 300))
        want = {orjson.loads(ln)["id"] for ln in lines}

        async def timed() -> tuple[float, float]:
            waiter = asyncio.create_task(_wait_records(c.bootstrap, scores, want, len(filters), 900))
            start = time.perf_counter()
            await produce_file(main_path, c.bootstrap, raw, partitions=partitions, max_batch_bytes=batch_bytes)
            return start, await waiter

        start, end = asyncio.run(timed())
        seconds = end - start
        return {"workers": n_workers, "partitions": partitions, "seconds": round(seconds, 3),
                "articles_per_s": round(len(lines) / seconds, 2),
                "broker": "embedded Tansu" if c.broker else c.bootstrap}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        c.stop()


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["articles_per_s"])[len(runs) // 2]


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=1000)
    parser.add_argument("--data", type=Path, help="JSONL of articles instead of synthetic ones")
    parser.add_argument("--filters", default=None, help="filter refs (default: FLUXSCORE_FILTERS)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="in-process batch = the probe agent's batch")
    parser.add_argument("--skip-scale", action="store_true", help="only the in-process vs broker ratio")
    parser.add_argument("--repeat", type=int, default=1, help="paired in-process/broker runs (median)")
    parser.add_argument("--scale-threads", type=int, default=1,
                        help="torch threads per worker in the 1-vs-2 run (1: each worker gets one core)")
    args = parser.parse_args(argv)

    from streams.settings import StreamSettings

    filters = [f.strip() for f in args.filters.split(",") if f.strip()] if args.filters else \
        list(StreamSettings.from_env().filters)
    packages = [resolve(f) for f in filters]
    lines = load_lines(args.articles, args.data)
    source = str(args.data) if args.data else "synthetic (training/synth.py, seed 2024)"
    console.print(f"{len(lines)} articles ({source}); filters {', '.join(p.ref for p in packages)}")
    run_dir = Path(tempfile.mkdtemp(prefix="fluxscore-bench-"))
    os.environ.setdefault("FLUXSCORE_PROBE_BATCH", str(args.batch))

    n = len(lines)
    results: list[Result] = []
    # Paired runs, alternating, so that load from elsewhere on the machine hits both sides alike; the
    # ratio is the median of the pairs' ratios.
    locals_, brokers, ratios = [], [], []
    for i in range(args.repeat):
        with console.status(f"in-process ({i + 1}/{args.repeat})"):
            locals_.append(in_process(lines, filters, args.batch))
        with console.status(f"through the broker, 1 worker ({i + 1}/{args.repeat})"):
            brokers.append(through_broker(lines, filters, 1, args.partitions, run_dir, {}))
        ratios.append(round(brokers[-1]["articles_per_s"] / locals_[-1]["articles_per_s"], 3))
    local = _median_run(locals_)
    one = _median_run(brokers)
    results.append(Result("stream", "in-process Pipeline.score (baseline)", local["articles_per_s"], n,
                          local["seconds"], extra={"batch": args.batch, "runs": len(locals_)}))
    results.append(Result("stream", "through Kafka, 1 worker (all roles)", one["articles_per_s"], n, one["seconds"],
                          extra={"vs_in_process": statistics.median(ratios), "pairs": ratios, "target": ">=0.90",
                                 "broker": one["broker"]}))
    if not args.skip_scale:
        threads = {"FLUXSCORE_TORCH_THREADS": str(args.scale_threads)}
        ones, twos, scales = [], [], []
        for i in range(args.repeat):
            with console.status(f"scale-out: 1 worker, {args.scale_threads} thread(s) ({i + 1}/{args.repeat})"):
                ones.append(through_broker(lines, filters, 1, args.partitions, run_dir, threads))
            with console.status(f"scale-out: 2 workers, {args.scale_threads} thread(s) each ({i + 1}/{args.repeat})"):
                twos.append(through_broker(lines, filters, 2, args.partitions, run_dir, threads))
            scales.append(round(twos[-1]["articles_per_s"] / ones[-1]["articles_per_s"], 3))
        s1, s2 = _median_run(ones), _median_run(twos)
        for label, r, extra in (("1 worker", s1, {}),
                                ("2 workers", s2, {"vs_1_worker": statistics.median(scales), "pairs": scales,
                                                   "target": ">=1.8"})):
            results.append(Result("stream", f"scale-out, {label}, {args.partitions} partitions, "
                                            f"{args.scale_threads} thread(s) each", r["articles_per_s"], n,
                                  r["seconds"], extra=extra))
    meta = {"input": source, "partitions": args.partitions,
            "filters": {p.name: {"version": p.version, "package_hash": p.package_hash} for p in packages},
            "targets": {"broker_over_in_process": 0.90, "two_workers_over_one": 1.8}}
    path = save("stream", results, meta)
    print_results(results, f"streaming overhead and scale-out ({n} articles)", path)
    return results


if __name__ == "__main__":
    main()
