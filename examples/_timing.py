"""Timing helpers the examples share: best time per call, and a small table.

EINPLAN_EXAMPLES_BUDGET (seconds, default 0.05) is how long each measurement
runs; the test suite sets it small, since there only the exit status counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

BUDGET = float(os.environ.get("EINPLAN_EXAMPLES_BUDGET", "0.05"))


def per_call(fn: Callable, *args, budget: float | None = None, repeat: int = 3) -> float:
    """Seconds per call of ``fn(*args)``: batches of calls long enough to time, best of ``repeat``."""
    budget = BUDGET if budget is None else budget
    start = time.perf_counter()
    fn(*args)  # warm up (plans, caches, allocator)
    if time.perf_counter() - start >= budget:  # slow: one more call is enough
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn(*args)
        elapsed = time.perf_counter() - start
        if elapsed >= budget / repeat or number >= 1 << 16:
            break
        number *= 4
    best = elapsed
    for _ in range(repeat - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn(*args)
        best = min(best, time.perf_counter() - start)
    return best / number


def human(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:7.2f} {unit}"
    return f"{seconds * 1e9:7.1f} ns"


def report(title: str, rows: Sequence[tuple[str, float]]) -> None:
    """Print ``rows`` (label, seconds per call); the first row is the baseline for the ratios."""
    print(f"\n{title}")
    base = rows[0][1]
    width = max(len(label) for label, _ in rows) + 2
    for label, seconds in rows:
        print(f"  {label:<{width}}{human(seconds)}   {seconds / base:6.2f}x the time of {rows[0][0]}")
