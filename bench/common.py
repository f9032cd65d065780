"""What every benchmark shares: machine facts, timing, the results table and JSON files."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    benchmark: str
    case: str
    items_per_s: float
    items: int
    seconds: float
    unit: str = "articles"
    extra: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        info["cpu"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def measure(fn: Callable[[], int], *, repeat: int = 3, warmup: int = 1) -> tuple[float, int, float]:
    """Run ``fn`` (which returns how many items it processed); median items/s over ``repeat`` runs."""
    for _ in range(warmup):
        fn()
    rates: list[float] = []
    items = 0
    total = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        items = fn()
        elapsed = time.perf_counter() - start
        total += elapsed
        rates.append(items / elapsed if elapsed > 0 else float("inf"))
    return statistics.median(rates), items, total / repeat


def table(results: list[Result], title: str) -> Table:
    out = Table(title=title)
    for col in ("benchmark", "case", "items/s", "items", "s/run", "notes"):
        out.add_column(col, justify="right" if col in ("items/s", "items", "s/run") else "left")
    for r in results:
        notes = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        out.add_row(r.benchmark, r.case, f"{r.items_per_s:,.1f} {r.unit}/s", str(r.items), f"{r.seconds:.3f}", notes)
    return out


def portable(value: Any) -> Any:
    """A path inside the repository as a path relative to it: committed results name no machine's folders.

    >>> portable(str(REPO / "scoring" / "data" / "x.jsonl"))
    'scoring/data/x.jsonl'
    """
    if isinstance(value, str | Path):
        try:
            return Path(value).resolve().relative_to(REPO).as_posix()
        except ValueError:
            return str(value)
    return value


def save(name: str, results: list[Result], meta: dict[str, Any] | None = None) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    meta = {k: portable(v) if isinstance(v, Path) or (isinstance(v, str) and v.startswith("/")) else v
            for k, v in (meta or {}).items()}
    body = {"benchmark": name, "at": stamp, "machine": machine_info(), "meta": meta,
            "results": [asdict(r) for r in results]}
    path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return path


def print_results(results: list[Result], title: str, saved: Path | None = None) -> None:
    console = Console()
    console.print(table(results, title))
    if saved:
        console.print(f"results: {saved}")
