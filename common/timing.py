"""Wall-time measures: one way to time calls and one median, for every command and benchmark that reports ms."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def time_calls(run: Callable[[], object], calls: int, untimed: int = 0) -> list[float]:
    """Seconds of each of `calls` calls of `run`, after `untimed` calls that are not timed (first-run allocations,
    or the slow first calls after a pause)."""
    for _ in range(untimed):
        run()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def median_ms(seconds: Sequence[float], warmup: int = 0) -> float:
    """Median in ms of per-call wall times in seconds, leaving out the first `warmup` (calls timed while the run
    warms up: allocations, lazy initialization, first-run kernel selection). The warm-up is left out only when
    more samples remain than it holds; a shorter run keeps them all, so that a handful of steps still has a time."""
    kept = seconds[warmup:] if len(seconds) > 2 * warmup else seconds
    return float(np.median(np.asarray(kept, dtype=np.float64)) * 1e3)
