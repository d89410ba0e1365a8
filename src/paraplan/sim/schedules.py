"""Per-rank order of pipeline work (forward / backward of micro-batch chunks), as the training engines issue it.

Three schedules, all returning ``order[rank] -> list[ScheduleOp]`` (the order the rank's compute stream runs them):

* ``gpipe_order``: fill-drain.  Every rank runs the forwards of micro-batches ``0..m-1`` and then the backwards
  of micro-batches ``0..m-1`` (the same ascending order; see the function for why).
* ``one_f_one_b_order``: Megatron-LM non-interleaved 1F1B (``forward_backward_pipelining_without_interleaving``).
* ``interleaved_order``: Megatron-LM interleaved 1F1B (``forward_backward_pipelining_with_interleaving``).

Layer-chunk convention (interleaved): chunk ``c`` on rank ``r`` is virtual stage ``c * pp + r`` of ``pp * vpp``
stages, so a micro-batch visits rank 0, 1, ..., pp-1 with chunk 0, then rank 0 again with chunk 1, and so on.
With ``vpp == 1`` the chunk is always 0 and the virtual stage is the rank.

The orders are built as numpy arrays (``order_arrays``) so the simulator can use them without making one Python
object per op; the ``*_order`` functions wrap those arrays into ``ScheduleOp`` lists.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from paraplan.errors import ParaplanError

SCHEDULE_NAMES = ("gpipe", "1f1b", "interleaved")

FORWARD = 0   # kind codes used in the arrays
BACKWARD = 1


class ScheduleOp(NamedTuple):
    """One unit of pipeline work on a rank: the forward ("F") or backward ("B") of one micro-batch through one chunk."""
    kind: str        # "F" or "B"
    microbatch: int  # 0 .. num_microbatches-1
    chunk: int       # 0 .. vpp-1 (model chunk held by this rank; virtual stage = chunk * pp + rank)


class RankOrder(NamedTuple):
    """Array form of one rank's order: ``kind[i]`` (0 = F, 1 = B), ``microbatch[i]``, ``chunk[i]``."""
    kind: np.ndarray
    microbatch: np.ndarray
    chunk: np.ndarray


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ParaplanError(f"{name} must be a positive integer, got {value!r}")


def _merge(f_mb: np.ndarray, f_chunk: np.ndarray, b_mb: np.ndarray, b_chunk: np.ndarray, warmup: int) -> RankOrder:
    """Megatron's three phases over T forward units and T backward units.

    warmup: forwards ``f[0:warmup]``; steady state: for i in range(T - warmup) the pair forward ``f[warmup + i]`` then
    backward ``b[i]``; cooldown: backwards ``b[T - warmup:]``.  ``warmup == T`` gives fill-drain (GPipe).
    """
    total = len(f_mb)
    rem = total - warmup
    n = 2 * total
    f_pos = np.concatenate((np.arange(warmup), warmup + 2 * np.arange(rem)))
    b_pos = np.concatenate((warmup + 1 + 2 * np.arange(rem), warmup + 2 * rem + np.arange(warmup)))
    kind = np.empty(n, dtype=np.int8)
    mb = np.empty(n, dtype=np.int64)
    chunk = np.empty(n, dtype=np.int64)
    kind[f_pos] = FORWARD
    kind[b_pos] = BACKWARD
    mb[f_pos] = f_mb
    mb[b_pos] = b_mb
    chunk[f_pos] = f_chunk
    chunk[b_pos] = b_chunk
    return RankOrder(kind, mb, chunk)


def interleaved_schedule_table(num_microbatches: int, vpp: int, group_size: int) -> list[tuple[int, int]]:
    """Megatron's ``get_schedule_table``: the (microbatch, chunk) of the k-th forward on every rank.

    Micro-batches are taken in groups of ``group_size`` (``microbatch_group_size_per_vp_stage``, default pp); each
    group runs through chunk 0, then chunk 1, ... before the next group starts.  When ``m % group_size != 0`` the
    last group is the remainder (smaller than group_size), as in Megatron's docstring example PP2, group 3, M5,
    VP2: micro-batches 0 1 2 0 1 2 3 4 3 4, chunks 0 0 0 1 1 1 0 0 1 1.  The k-th backward uses the same
    micro-batch and chunk ``vpp - 1 - chunk``.
    """
    mb, chunk = _schedule_table_arrays(num_microbatches, vpp, group_size)
    return list(zip(mb.tolist(), chunk.tolist()))


def _schedule_table_arrays(m: int, vpp: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    mbs: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    for lo in range(0, m, group):
        hi = m if lo + group >= m else lo + group   # Megatron: the last group is whatever remains (may be < group)
        ids = np.arange(lo, hi)
        mbs.append(np.tile(ids, vpp))
        chunks.append(np.repeat(np.arange(vpp), len(ids)))
        if hi == m:
            break
    return np.concatenate(mbs), np.concatenate(chunks)


def interleaved_warmup(pp: int, vpp: int, rank: int, num_microbatches: int, group_size: int | None = None) -> int:
    """Number of warm-up forwards (chunk units) on ``rank`` in Megatron's interleaved schedule.

    ``(pp - rank - 1) * 2 + (vpp - 1) * group_size``, capped at ``num_microbatches * vpp`` (then every forward
    is warm-up and the rank runs all forwards before any backward, as Megatron's ``are_all_microbatches_in_warmup``).
    With ``vpp == 1`` this is the non-interleaved ``min(pp - rank - 1, num_microbatches)``.
    """
    group = pp if group_size is None else group_size
    if vpp == 1:
        return min(pp - rank - 1, num_microbatches)
    return min((pp - rank - 1) * 2 + (vpp - 1) * group, num_microbatches * vpp)


@lru_cache(maxsize=64)
def _order_arrays_cached(schedule: str, pp: int, vpp: int, m: int, group: int) -> tuple[RankOrder, ...]:
    if schedule == "gpipe":
        ids = np.arange(m)
        zeros = np.zeros(m, dtype=np.int64)
        one = _merge(ids, zeros, ids, zeros, m)
        return tuple(one for _ in range(pp))
    if schedule == "1f1b" or (schedule == "interleaved" and vpp == 1):
        ids = np.arange(m)
        zeros = np.zeros(m, dtype=np.int64)
        return tuple(_merge(ids, zeros, ids, zeros, min(pp - r - 1, m)) for r in range(pp))
    # interleaved, vpp > 1
    f_mb, f_chunk = _schedule_table_arrays(m, vpp, group)
    b_chunk = vpp - 1 - f_chunk
    return tuple(_merge(f_mb, f_chunk, f_mb, b_chunk, interleaved_warmup(pp, vpp, r, m, group)) for r in range(pp))


def _validate(schedule: str, pp: int, vpp: int, m: int, group_size: int | None) -> int:
    """Check the arguments; return the interleaved micro-batch group size (pp by default; 0 when unused)."""
    if schedule not in SCHEDULE_NAMES:
        raise ParaplanError(f"pipeline schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {schedule!r}")
    _check_positive("pp", pp)
    _check_positive("vpp", vpp)
    _check_positive("num_microbatches", m)
    if schedule in ("gpipe", "1f1b") and vpp != 1:
        raise ParaplanError(f"schedule {schedule!r} needs vpp == 1 (got vpp={vpp}); use 'interleaved' for vpp > 1")
    if schedule != "interleaved" or vpp == 1:
        if group_size is not None:
            raise ParaplanError("microbatch_group_size applies only to the interleaved schedule with vpp > 1")
        return 0
    if m < pp:
        raise ParaplanError(
            f"interleaved schedule needs num_microbatches >= pp (Megatron-LM does not support fewer), "
            f"got num_microbatches={m}, pp={pp}; use more micro-batches, vpp=1, or a smaller pp")
    group = pp if group_size is None else group_size
    _check_positive("microbatch_group_size", group)
    if not pp <= group <= m:
        raise ParaplanError(f"interleaved microbatch_group_size must be in [pp={pp}, num_microbatches={m}], got {group}")
    rem = m % group
    if 0 < rem < pp:
        hint = " (with the default group size pp, num_microbatches must be a multiple of pp)" if group_size is None else ""
        raise ParaplanError(
            f"interleaved schedule: num_microbatches={m} leaves a last group of {rem} micro-batches "
            f"(group size {group}), fewer than pp={pp}; Megatron-LM rejects this (the order deadlocks)" + hint)
    return group


def order_arrays(schedule: str, pp: int, vpp: int, num_microbatches: int,
                 microbatch_group_size: int | None = None) -> tuple[RankOrder, ...]:
    """Array form of ``schedule``'s order, one ``RankOrder`` per rank (cached; treat the arrays as read-only).

    ``"interleaved"`` with ``vpp == 1`` is the non-interleaved 1F1B order (Megatron runs the non-interleaved
    schedule when there is no virtual pipeline).  ``microbatch_group_size`` is Megatron's
    ``microbatch_group_size_per_vp_stage`` (interleaved only; default pp).
    """
    group = _validate(schedule, pp, vpp, num_microbatches, microbatch_group_size)
    return _order_arrays_cached(schedule, int(pp), int(vpp), int(num_microbatches), int(group))


def _to_ops(arrays: tuple[RankOrder, ...]) -> list[list[ScheduleOp]]:
    names = ("F", "B")
    return [[ScheduleOp(names[k], mb, c) for k, mb, c in zip(a.kind.tolist(), a.microbatch.tolist(), a.chunk.tolist())]
            for a in arrays]


def gpipe_order(pp: int, num_microbatches: int) -> list[list[ScheduleOp]]:
    """GPipe fill-drain: every rank runs F0..F(m-1), then B0..B(m-1).

    Choice: backwards in ascending micro-batch order (B0 first), as the brief asks ("as torchgpipe does"), which is
    also what fill-drain implementations that loop over micro-batches (e.g. DeepSpeed's ``TrainSchedule`` with
    all forwards first) do.  With uniform stage costs the ascending and the descending backward order give the
    same makespan and the same peak of m in-flight micro-batches; they differ only in which activations are freed
    first.  (In autograd-driven implementations the real order is whatever the autograd engine picks.)
    """
    return _to_ops(order_arrays("gpipe", pp, 1, num_microbatches))


def one_f_one_b_order(pp: int, num_microbatches: int) -> list[list[ScheduleOp]]:
    """Megatron non-interleaved 1F1B.

    Rank r: warm-up ``w = min(pp - r - 1, m)`` forwards F0..F(w-1); steady state ``m - w`` pairs
    (F(w + i), B(i)); cool-down backwards B(m-w)..B(m-1).  Works for ``m < pp`` (ranks with ``w = m`` are fill-drain).
    """
    return _to_ops(order_arrays("1f1b", pp, 1, num_microbatches))


def interleaved_order(pp: int, vpp: int, num_microbatches: int,
                      microbatch_group_size: int | None = None) -> list[list[ScheduleOp]]:
    """Megatron interleaved 1F1B (``forward_backward_pipelining_with_interleaving``); ``microbatch_group_size`` is
    ``microbatch_group_size_per_vp_stage`` (default pp; call it G below).

    The k-th forward on every rank is ``interleaved_schedule_table(m, vpp, G)[k]`` (for G = pp and ``m % pp == 0``:
    micro-batch ``(k // (pp*vpp)) * pp + k % pp``, chunk ``(k // pp) % vpp``); the k-th backward is the same
    micro-batch with chunk ``vpp - 1 - chunk``.  Warm-up on rank r is ``(pp - r - 1) * 2 + (vpp - 1) * G``
    forwards, capped at ``m * vpp`` (then all forwards run before any backward); then 1F1B pairs (forward
    first), then cool-down backwards.  As in Megatron-LM (core ``schedules.py``): ValueError unless
    ``pp <= G <= m`` (so ``m >= pp``), and unless ``m % G`` is 0 or >= pp -- with the default G = pp this means
    ``m % pp == 0`` (a shorter last group makes the order deadlock; Megatron raises too).
    """
    return _to_ops(order_arrays("interleaved", pp, vpp, num_microbatches, microbatch_group_size))


def schedule_order(schedule: str, pp: int, vpp: int, num_microbatches: int,
                   microbatch_group_size: int | None = None) -> list[list[ScheduleOp]]:
    """Dispatch by name: "gpipe", "1f1b" or "interleaved"."""
    return _to_ops(order_arrays(schedule, pp, vpp, num_microbatches, microbatch_group_size))
