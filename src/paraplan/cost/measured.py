"""Measured curves from a `paraplan profile` hardware file, looked up by the cost model where they cover a query.

GEMMs: the measured throughput at a shape corrects the analytic efficiency (compute.gemm_efficiency) by the ratio
measured / analytic, interpolated between measured shapes in log2(m, n, k) space (inverse-distance weighting of
the log ratio over the nearest points; a query outside the measured box is clamped onto it). The analytic model
keeps describing how efficiency varies between shapes; the measurements fix its level where they were taken.

Collectives: the measured seconds of (op, group size, nodes) are interpolated piecewise-linearly in log(size) /
log(seconds); below the smallest measured size the smallest's time holds (latency-bound), above the largest the
time grows linearly with size at the largest's bandwidth. A group shape that was not measured returns None and
the caller uses its analytic model.
"""
from __future__ import annotations

import bisect
import functools
import math
from typing import Callable

import numpy as np

_NEAREST = 4          # measured shapes that inform one query
_PRECISION_FALLBACK = {"fp16": ("bf16",), "bf16": ("fp16",), "fp8": ("bf16", "fp16")}


class Table(tuple):
    """Rows of a measured curve that remember their hash: the cost model's caches hash the Calibration holding
    them on every GEMM, and hashing a few hundred rows each time would cost more than the GEMM model itself."""

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:
            self._hash = tuple.__hash__(self)
            return self._hash

    def __reduce__(self):
        return Table, (tuple(self),)        # string hashes differ between processes: never ship the cached one


@functools.lru_cache(maxsize=256)
def gemm_rows(table: tuple, precision: str) -> tuple:
    """The measured (m, n, k, tflops) rows for `precision`: its own, else its 16-bit sibling, else the rows of the
    first precision in the table (the profiled device's training dtype: fp32 on a CPU)."""
    by_precision: dict[str, list] = {}
    for p, m, n, k, tflops in table:
        by_precision.setdefault(p, []).append((m, n, k, tflops))
    for p in (precision, *_PRECISION_FALLBACK.get(precision, ())):
        if p in by_precision:
            return Table(by_precision[p]), p
    first = table[0][0] if table else None
    return Table(by_precision.get(first, ())), first


def gemm_correction(rows: tuple, m: int, n: int, k: int, analytic_tflops: Callable[[int, int, int], float]) -> float:
    """Factor on the analytic efficiency at (m, n, k): interpolated log(measured / analytic) of the measured rows."""
    if not rows:
        return 1.0
    points, lo, hi = _log_points(rows)
    q = np.clip(np.log2([m, n, k]), lo, hi)
    dist = np.sqrt(((points - q) ** 2).sum(axis=1))
    num = den = 0.0
    for i in np.argsort(dist, kind="stable")[:_NEAREST]:
        mm, nn, kk, tflops = rows[i]
        log_ratio = math.log(tflops / analytic_tflops(mm, nn, kk))
        if dist[i] < 1e-9:
            return math.exp(log_ratio)
        w = 1.0 / (dist[i] * dist[i])
        num += w * log_ratio
        den += w
    return math.exp(num / den)


@functools.lru_cache(maxsize=64)
def _log_points(rows: tuple) -> tuple:
    """log2 (m, n, k) of the measured rows and the box they span (a search asks thousands of shapes of one table)."""
    points = np.log2(np.array([r[:3] for r in rows], dtype=float))
    return points, points.min(axis=0), points.max(axis=0)


@functools.lru_cache(maxsize=64)
def _collective_curves(table: tuple) -> dict:
    """(op, group size, nodes) -> (sorted log sizes, log seconds)."""
    curves: dict[tuple, list] = {}
    for op, size, nodes, nbytes, seconds in table:
        if nbytes > 0 and seconds > 0:
            curves.setdefault((op, int(size), int(nodes)), []).append((nbytes, seconds))
    out = {}
    for key, points in curves.items():
        points.sort()
        out[key] = ([math.log(b) for b, _ in points], [math.log(s) for _, s in points])
    return out


def collective_seconds(table: tuple, op: str, nbytes: float, size: int, nodes: int) -> float | None:
    """Measured seconds of `op` on `nbytes` over a group of `size` ranks on `nodes` nodes, or None if unmeasured."""
    curve = _collective_curves(table).get((op, size, nodes))
    if curve is None or nbytes <= 0:
        return None
    xs, ys = curve
    x = math.log(nbytes)
    if x <= xs[0]:
        return math.exp(ys[0])
    if x >= xs[-1]:
        # bandwidth-bound beyond the largest size: extend the last segment's seconds per byte
        s1, t1 = math.exp(xs[-1]), math.exp(ys[-1])
        per_byte = t1 / s1
        if len(xs) > 1:
            s0, t0 = math.exp(xs[-2]), math.exp(ys[-2])
            if t1 > t0:
                per_byte = (t1 - t0) / (s1 - s0)
        return t1 + (nbytes - s1) * per_byte
    i = bisect.bisect_right(xs, x)
    t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return math.exp(ys[i - 1] + t * (ys[i] - ys[i - 1]))
