"""Layer splits for a pipeline of stages of different speeds and memory.

balanced_split is exact for its objective: the smallest possible slowest-stage time max_i(L_i * t_i + e_i) (the
steady state of 1F1B runs at the pace of its slowest stage) over integer splits with 1 <= L_i <= cap_i, where t_i
is the stage's seconds per layer per micro-batch, e_i what it runs besides its layers (embedding on the first
stage, LM head and loss on the last: counted, as Megatron's account-for-embedding/loss options do) and cap_i the
most layers its GPU memory holds. The continuous relaxation of the same problem gives the search a lower bound
(relaxed_bottleneck). power_split is the Metis-like rule (layers in proportion to a stage's peak compute).
"""
from __future__ import annotations


import numpy as np

from paraplan.errors import ParaplanError


def _layers_at(T: float, t, e, caps) -> np.ndarray:
    return np.minimum(caps, np.floor((T - e) / t + 1e-9)).astype(np.int64)


def balanced_split(t, e, layers: int, caps=None) -> tuple[int, ...]:
    """Integer split minimising max_i(L_i t_i + e_i) with 1 <= L_i <= caps_i; ParaplanError if none exists."""
    t, e = np.asarray(t, float), np.asarray(e, float)
    n = len(t)
    caps = np.full(n, layers, np.int64) if caps is None else np.minimum(np.asarray(caps, np.int64), layers)
    if n > layers or caps.min() < 1 or caps.sum() < layers:
        raise ParaplanError(f"{layers} layers cannot be split over {n} stages holding at most {caps.tolist()}")
    # candidate bottlenecks: some stage at exactly k layers
    cand = np.unique(np.concatenate([np.arange(1, caps[i] + 1) * t[i] + e[i] for i in range(n)]))
    floor_T = float(np.max(t + e))                 # every stage holds at least one layer
    cand = cand[cand >= floor_T - 1e-15]
    lo, hi = 0, len(cand) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _layers_at(cand[mid], t, e, caps).sum() >= layers:
            hi = mid
        else:
            lo = mid + 1
    split = _layers_at(cand[lo], t, e, caps)
    excess = int(split.sum() - layers)
    # give back the extra layers from the slowest stages first (later stages first on ties: earlier stages keep
    # more micro-batches in flight, so they are the ones short of memory)
    while excess > 0:
        times = np.where(split > 1, split * t + e, -np.inf)
        i = int(np.flatnonzero(times == times.max())[-1])
        split[i] -= 1
        excess -= 1
    return tuple(int(x) for x in split)


def relaxed_bottleneck(t, e, layers: int) -> float:
    """Smallest T with sum_i (T - e_i) / t_i >= layers: a lower bound on max_i(L_i t_i + e_i) for any split
    (ignoring memory caps and integrality), and at least max_i(t_i + e_i) since every stage has a layer."""
    t, e = np.asarray(t, float), np.asarray(e, float)
    inv = 1.0 / t
    return max(float((layers + (e * inv).sum()) / inv.sum()), float(np.max(t + e)))


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
