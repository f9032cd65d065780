"""``python -m bench``: every benchmark in turn, one table, JSON results under bench/results/.

    python -m bench                      # stages in-process + streaming (broker) benchmarks
    python -m bench --quality-data ../shared/data/oracle-labelled-seece-dev.jsonl   # + quality
    python -m bench core|stream|quality|gpu [args…]                                 # one of them
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from bench.common import Result, print_results, save

SUITES = ("core", "stream", "quality", "gpu")


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUITES:
        importlib.import_module(f"bench.{argv[0]}").main(argv[1:])
        return 0
    quality_data: Path | None = None
    if "--quality-data" in argv:
        quality_data = Path(argv[argv.index("--quality-data") + 1])
    results: list[Result] = []
    results += importlib.import_module("bench.core").main([])
    import torch

    if torch.cuda.is_available():
        results += importlib.import_module("bench.gpu").main([])
    stream = importlib.import_module("bench.stream")
    results += stream.main([])
    if quality_data is not None:
        results += importlib.import_module("bench.quality").main(["--data", str(quality_data)])
    path = save("all", results)
    print_results(results, "fluxscore benchmarks", path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
