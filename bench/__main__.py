"""``python -m bench``: every benchmark in turn, one table, JSON results under bench/results/.

    python -m bench                      # stages in-process, streaming (broker), drift monitor
    python -m bench --quality-data ../shared/data/oracle-labelled-seece-dev.jsonl   # + quality
    python -m bench core|stream|quality|gpu|monitor|encoders|commerce [args…]       # one of them
    python -m bench SUITE --help                                                    # a suite's options
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.common import Result, print_results, save

SUITES = ("core", "stream", "quality", "gpu", "monitor", "encoders", "commerce")


def parser() -> argparse.ArgumentParser:
    """The options of the whole run; a suite's own come after its name (``python -m bench core --help``)."""
    parse = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--quality-data", type=Path, metavar="JSONL",
                       help="labelled articles: also run the quality benchmark on them")
    return parse


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUITES:
        importlib.import_module(f"bench.{argv[0]}").main(argv[1:])
        return 0
    # Parsed before anything runs: --help (or a mistyped option) must not start a run of many minutes.
    args = parser().parse_args(argv)
    results: list[Result] = []
    results += importlib.import_module("bench.core").main([])
    import torch

    if torch.cuda.is_available():
        results += importlib.import_module("bench.gpu").main([])
    stream = importlib.import_module("bench.stream")
    results += stream.main([])
    results += importlib.import_module("bench.monitor").main([])
    if args.quality_data is not None:
        results += importlib.import_module("bench.quality").main(["--data", str(args.quality_data)])
    path = save("all", results)
    print_results(results, "fluxscore benchmarks", path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
