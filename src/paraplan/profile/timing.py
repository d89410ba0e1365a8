"""Timing one benchmark: warm up, repeat the kernel until a sample lasts long enough to time, several samples.

On CUDA a sample is timed with events around back-to-back launches, as a training step issues them (so a small
kernel costs its launch throughput, not a synchronisation round trip); on CPU with the wall clock.
Benchmarks, the check and the collectives all report `typical` of their samples.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

MAX_INNER = 200     # kernels per sample at most (tiny kernels)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, min_sample_s: float) -> list[float]:
    """Seconds per call of `fn`, one value per sample."""
    fn()                                     # warm-up: allocations, kernel selection, caches
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = max(time.perf_counter() - start, 1e-7)
    inner = max(1, min(MAX_INNER, int(min_sample_s / first)))
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / 1e3 / inner)
        else:
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - start) / inner)
    return samples


def typical(samples: list[float], device: torch.device) -> float:
    """The value a benchmark reports: the median on a GPU; on a CPU the fastest sample, because a CPU shared with
    other processes only ever loses time to them (a time slice taken is never given back)."""
    return statistics.median(samples) if device.type == "cuda" else min(samples)
