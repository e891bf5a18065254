"""A process pool for per-image work: `pool_map(fn, items, workers, label)` yields `fn(item)` in the items' order.

`workers` is a count of processes; 0 or None means every core this process may run on. With one worker (or one
item) the work runs in this process, without a pool. Results come back in input order whatever the number of
workers, so a stage's output never depends on it. A progress line goes to stderr about every 10 % (the project's
`progress` helper: no extra library for a bar that DVC's log would show as one line per redraw anyway).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from .common import progress

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | None) -> int:
    return available_cores() if not workers else max(1, int(workers))


def pool_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None, label: str) -> Iterator[R]:
    items = list(items)
    count = min(resolve_workers(workers), len(items)) or 1
    if count == 1:
        yield from progress((fn(item) for item in items), label, total=len(items))
        return
    # Chunks big enough to amortise the pickling, small enough that the last ones spread over the workers.
    chunksize = max(1, min(32, len(items) // (count * 8)))
    with ProcessPoolExecutor(max_workers=count) as pool:
        yield from progress(pool.map(fn, items, chunksize=chunksize), label, total=len(items))
