"""Helpers the benchmark scripts share: the machine they ran on, and timing."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

__all__ = ["cpu_model", "median_s"]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median_s(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls of ``fn``, and what the last call returned."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
