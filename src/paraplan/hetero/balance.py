"""Layer splits for a pipeline of stages of different speeds and memory.

balanced_split is exact for its objective: the smallest possible slowest-stage time max_i(L_i * t_i + e_i) (the
steady state of 1F1B runs at the pace of its slowest stage) over integer splits with 1 <= L_i <= cap_i, where t_i
is the stage's seconds per layer per micro-batch, e_i what it runs besides its layers (embedding on the first
stage, LM head and loss on the last: counted, as Megatron's account-for-embedding/loss options do) and cap_i the
most layers its GPU memory holds. The continuous relaxation of the same problem gives the search a lower bound
(relaxed_bottleneck). power_split is the Metis-like rule (layers in proportion to a stage's peak compute).
"""
from __future__ import annotations

import heapq
import math


import numpy as np

from paraplan.errors import ParaplanError


def balanced_split(t, e, layers: int, caps=None, low: int = 1) -> tuple[int, ...]:
    """Integer split minimising max_i(L_i t_i + e_i) with low <= L_i <= caps_i; ParaplanError if none exists
    (low > 1: an interleaved pipeline's stages need at least vpp layers).

    Start every stage at the layers it holds under the relaxed bottleneck T* (a lower bound on the optimum, so no
    stage starts above its count in an optimal split), then add layers one at a time where the stage's new time is
    smallest: the classic greedy for a min-max of increasing separable costs, exact from such a start."""
    t, e = [float(x) for x in t], [float(x) for x in e]
    n = len(t)
    caps = [layers] * n if caps is None else [min(int(c), layers) for c in caps]
    if n * low > layers or min(caps) < low or sum(caps) < layers:
        raise ParaplanError(f"{layers} layers cannot be split over {n} stages holding {low} to {caps} each")
    # stages too slow to take `low` layers at the relaxed bottleneck keep exactly that; the rest share the others
    # (the relaxed optimum with L_i >= low: no stage starts above its count in an optimal split)
    fixed: set[int] = set()
    T = 0.0
    while len(fixed) < n:
        rest = [i for i in range(n) if i not in fixed]
        T = (layers - low * len(fixed) + sum(e[i] / t[i] for i in rest)) / sum(1.0 / t[i] for i in rest)
        slow = {i for i in rest if (T - e[i]) / t[i] < low}
        if not slow:
            break
        fixed |= slow
    split = [low if i in fixed else max(low, min(caps[i], int(math.floor((T - e[i]) / t[i] + 1e-12))))
             for i in range(n)]
    if sum(split) > layers:                 # float rounding only: trim the slowest stages
        trim = [(-(split[i] * t[i] + e[i]), -i) for i in range(n) if split[i] > low]
        heapq.heapify(trim)
        while sum(split) > layers:
            _, j = heapq.heappop(trim)
            split[-j] -= 1
            if split[-j] > low:
                heapq.heappush(trim, (-(split[-j] * t[-j] + e[-j]), j))
    heap = [((split[i] + 1) * t[i] + e[i], i) for i in range(n) if split[i] < caps[i]]
    heapq.heapify(heap)
    for _ in range(layers - sum(split)):
        _, i = heapq.heappop(heap)
        split[i] += 1
        if split[i] < caps[i]:
            heapq.heappush(heap, ((split[i] + 1) * t[i] + e[i], i))
    return tuple(split)


def relaxed_bottleneck(t, e, layers: int) -> float:
    """Smallest T with sum_i (T - e_i) / t_i >= layers: a lower bound on max_i(L_i t_i + e_i) for any split
    (ignoring memory caps and integrality), and at least max_i(t_i + e_i) since every stage has a layer."""
    inv = [1.0 / x for x in t]
    T = (layers + sum(ei * v for ei, v in zip(e, inv))) / sum(inv)
    return max(T, max(ti + ei for ti, ei in zip(t, e)))


def power_split(power, layers: int) -> tuple[int, ...]:
    """Layers in proportion to `power` (largest remainders), at least one each: the Metis-like split."""
    w = np.asarray(power, float)
    n = len(w)
    if n > layers:
        raise ParaplanError(f"{layers} layers cannot be split over {n} stages")
    raw = 1 + (layers - n) * w / w.sum()
    split = np.floor(raw).astype(np.int64)
    rest = layers - int(split.sum())
    order = np.argsort(-(raw - split), kind="stable")
    split[order[:rest]] += 1
    return tuple(int(x) for x in split)


def split_time(split, t, e) -> float:
    return float(np.max(np.asarray(split) * np.asarray(t) + np.asarray(e)))


__all__ = ["balanced_split", "relaxed_bottleneck", "power_split", "split_time"]
