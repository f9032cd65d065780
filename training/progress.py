"""Progress of the training and evolve commands on stderr: bars on a terminal, plain rate-limited lines on a
pipe or a log file (a rich bar prints nothing useful there, so a long student training would be silent)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from training.steps import ProgressFn

# On a pipe or log: at most one line per task this often (seconds), besides its first and last.
LOG_INTERVAL = 5.0


def task_key(description: str) -> str:
    """Descriptions carry changing details (epoch, loss, MAE); the task is what comes before them."""
    return description.split(" (")[0].split(" epoch")[0].split(" validation")[0]


def plain_progress(console: Console, interval: float = LOG_INTERVAL,
                   clock: Callable[[], float] = time.monotonic) -> ProgressFn:
    """Progress as plain lines, for output that is not a terminal (a rich bar prints nothing useful there)."""
    started: dict[str, float] = {}
    last: dict[str, float] = {}
    finished: set[str] = set()

    def update(description: str, completed: int, total: int | None) -> None:
        key = task_key(description)
        now = clock()
        done = total is not None and completed >= total
        if key not in started or (key in finished and not done):
            started[key] = last[key] = now  # a task seen again after it finished (the next pass) starts over
            finished.discard(key)
            if not done and completed == 0:
                return  # a start says nothing yet; a quick task (a cached embedding pass) then prints one line
        elif key in finished or (not done and now - last[key] < interval):
            return
        last[key] = now
        if done:
            finished.add(key)
        amount = f"{completed}/{total} ({100.0 * completed / total:.0f}%)" if total else f"{completed}"
        console.print(f"{time.strftime('%H:%M:%S')} {description}: {amount}, {now - started[key]:.0f} s",
                      soft_wrap=True, markup=False, highlight=False)

    return update


@contextmanager
def progress_display(console: Console) -> Iterator[ProgressFn]:
    """A rich progress display on a terminal, each distinct description prefix with its own bar; plain
    rate-limited lines otherwise."""
    if not console.is_terminal:
        yield plain_progress(console)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def update(description: str, completed: int, total: int | None) -> None:
            key = task_key(description)
            if key not in tasks:
                tasks[key] = bars.add_task(description, total=total)
            bars.update(tasks[key], description=description, completed=completed, total=total)

        yield update
