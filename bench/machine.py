"""How fast this machine runs Python right now, printed beside a benchmark's figures.

The same code has measured twice as fast on one hour of this machine as on another (every process's
CPU a job moving together), so a figure means little without the speed it was taken at: compare
runs by this too, and a target met or missed by it.
"""

from __future__ import annotations

import time

STEPS = 2_000_000


def python_ms() -> float:
    """CPU milliseconds of one core for a fixed pure-Python loop, the best of five (lower is faster)."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        total = 0
        for step in range(STEPS):
            total += step * step % 7
        best = min(best, time.process_time() - started)
    return best * 1000


def speed_line() -> str:
    return f"machine: {STEPS:,} steps of a Python loop take {python_ms():.0f} ms of CPU (lower is faster)"
