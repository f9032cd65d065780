"""Run a stage over a batch so that one bad item costs that item, never the batch.

The batch command and every stream agent call a stage (``Pipeline.screen``, ``probe``, ``escalate``,
``score``) on many items at once, because the models are batched. An item that makes the stage raise
— a hostile record that got past validation, a bug that only one input triggers — must not sink the
valid items beside it: the batch is retried item by item and only the failing ones are reported.

>>> def halve(xs: list[int]) -> list[float]:
...     return [10 / x for x in xs]
>>> isolate(halve, [1, 0, 5])
([[10.0], [2.0]], [(1, ZeroDivisionError('division by zero'))])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("fluxscore.isolate")


def isolate(fn: Callable[[list[T]], R], items: Sequence[T]) -> tuple[list[R], list[tuple[int, Exception]]]:
    """``fn`` over the whole batch; if that raises, over each item alone.

    Returns the outputs (one for the whole batch, or one per item that succeeded, in order) and the
    ``(index, exception)`` of each item that failed on its own. ``BaseException``\\ s that are not
    ``Exception`` (KeyboardInterrupt, SystemExit) are never swallowed.
    """
    batch = list(items)
    if not batch:
        return [], []
    try:
        return [fn(batch)], []
    except Exception as exc:
        if len(batch) == 1:
            return [], [(0, exc)]
        log.warning("batch failed, isolating the failing items",
                    extra={"items": len(batch), "error": f"{type(exc).__name__}: {exc}"})
    outputs: list[R] = []
    failed: list[tuple[int, Exception]] = []
    for i, item in enumerate(batch):
        try:
            outputs.append(fn([item]))
        except Exception as exc:
            failed.append((i, exc))
    return outputs, failed
