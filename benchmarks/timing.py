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


class _GlobalOnly:
    """Stands in for `FlopCounterMode`'s per-module tracker, whose backward hooks `torch.autograd.grad` on
    leaf inputs (as `ntk_peft.ntk.capture` runs it) refuses; every count goes to the total alone."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def counted_flops(function) -> int:
    """Floating-point operations of one call of ``function()`` as `torch.utils.flop_counter` counts them:
    matrix products, convolutions and attention (forward and backward; the CPU's fused attention too), not
    elementwise work."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    # the CPU's fused attention is not in torch's table: count it as the CUDA flash kernel's same products
    aten = torch.ops.aten
    counter.flop_registry.setdefault(aten._scaled_dot_product_flash_attention_for_cpu,
                                     counter.flop_registry[aten._scaled_dot_product_flash_attention])
    counter.flop_registry.setdefault(aten._scaled_dot_product_flash_attention_for_cpu_backward,
                                     counter.flop_registry[aten._scaled_dot_product_flash_attention_backward])
    with counter:
        function()
    return counter.get_total_flops()


def cost_measure(flops_at: float | None):
    """``measure(function, repeats) -> seconds``: `median_seconds` on this device, or with ``flops_at`` (FLOP/s)
    the call's `counted_flops` at that rate, the floor of any device that sustains it (run once, not timed)."""
    if flops_at is None:
        return median_seconds
    return lambda function, repeats: counted_flops(function) / flops_at


def floor_label(flops_at: float | None) -> dict:
    """What a FLOP-count run adds to its unit costs' record (``device`` says it is a floor), or nothing."""
    if flops_at is None:
        return {}
    return {"device": f"FLOP count at {flops_at:.3g} FLOP/s (a floor)", "flops_at": flops_at}
