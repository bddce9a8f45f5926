"""The benchmarks' shared timer (imported by the scripts beside it, run as ``python benchmarks/X.py``)."""

from __future__ import annotations

import statistics
import time

import torch


def median_seconds(function, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``repeats`` calls of ``function()``, after one untimed call when ``warmup``; CUDA
    work is waited for before each clock reading."""
    def synchronize():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    if warmup:
        function()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
