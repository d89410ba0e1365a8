"""Event-level simulation of a pipeline schedule (which ops each rank runs, in which order, when).

Model
-----
* Every pipeline rank has one **compute stream** that runs its ops (``schedules.py``) strictly in order.
* An op starts when the rank's compute stream is free **and** its input is there:
  - forward of virtual stage ``v > 0`` needs the forward of ``v - 1`` (same micro-batch);
  - backward of ``v < V - 1`` needs the backward of ``v + 1`` (same micro-batch);
  - backward of the last virtual stage ``V - 1`` needs its own forward;
  - forward of virtual stage 0 needs nothing.
  When producer and consumer sit on different ranks (always, for ``pp > 1``) the input arrives ``p2p_s`` after the
  producer ends (a ``SEND_F`` / ``SEND_B`` event).  Receives are posted early (as Megatron's ``irecv``), so a
  receiver never blocks a sender, and there is no rendezvous: this is the data-flow (asynchronous) reading of
  Megatron's schedule.  Sends are not serialised against each other (each message costs ``p2p_s`` on its own).
* ``p2p_overlapped=True``: sends run on a separate stream; they delay only the receiver.
  ``p2p_overlapped=False``: the sender's compute stream is also blocked for ``p2p_s`` after every op that sends.
* ``busy_s`` counts forward and backward compute only; ``bubble_s = makespan_s - busy_s`` is all other time of the
  compute stream: pipeline fill/drain, waits for data (including p2p latency) and, when p2p is not overlapped,
  the time the stream is blocked by sends.

Dependencies do not depend on costs, so an order is "compiled" once per (schedule, pp, vpp, m) (LRU-cached):
a vectorised round-by-round sweep (every rank takes its next op if that op's input is done) finds the *levels*
(ops whose longest chain of predecessors has the same number of ops; at most one op per rank per level) and
detects deadlock.  Timing is then one pass over the levels with four numpy calls per level; nothing is built
per op unless ``record_events=True`` (``backward_windows`` are ``WindowList`` views over numpy arrays).

Consequence worth knowing: with in-order 1F1B and balanced stages every compute path is tight, so the p2p latency
is exposed in the steady state too (rank r's backward waits on a round trip through rank r+1), not just in fill and
drain; see ``closed_form_1f1b``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from paraplan.errors import ParaplanError
from paraplan.sim.schedules import BACKWARD, FORWARD, RankOrder, ScheduleOp, order_arrays


@dataclass
class PipelineCosts:
    forward_s: list[list[float]]    # [rank][chunk] seconds for one micro-batch forward of that chunk
    backward_s: list[list[float]]   # [rank][chunk] seconds for one micro-batch backward (incl. recompute if any)
    p2p_s: float                    # seconds to send one micro-batch's activation (or gradient) between neighbouring ranks
    p2p_overlapped: bool = True     # True: async isend/irecv on a comm stream; False: sender's compute stream blocked too

    @classmethod
    def uniform(cls, pp: int, vpp: int, forward_s: float, backward_s: float, p2p_s: float = 0.0,
                p2p_overlapped: bool = True) -> "PipelineCosts":
        """Same cost for every chunk on every rank (``forward_s`` / ``backward_s`` are per chunk)."""
        return cls([[float(forward_s)] * vpp for _ in range(pp)], [[float(backward_s)] * vpp for _ in range(pp)],
                   float(p2p_s), p2p_overlapped)


@dataclass
class Event:
    rank: int
    kind: str         # "F", "B", "SEND_F", "SEND_B"
    microbatch: int
    chunk: int        # the (sending) op's chunk on ``rank``
    start_s: float
    end_s: float
    stream: str       # "compute" or "p2p" (sends are on "compute" when p2p is not overlapped)


@dataclass
class PipelineResult:
    makespan_s: float                 # from time 0 to the end of the last backward on any rank
    busy_s: list[float]               # compute-busy seconds per rank (forward + backward only)
    bubble_s: list[float]             # makespan_s - busy_s per rank
    last_backward_end_s: list[float]  # per rank
    first_backward_start_s: list[float]
    backward_windows: list[Sequence[tuple[float, float]]]  # per rank: (start, end) of each backward, in time order
                                      # (a WindowList: list-like, with .starts / .ends numpy arrays)
    peak_inflight_microbatches: list[int]   # per rank: max micro-batch-chunks with forward done, backward not done
    events: list[Event] = field(default_factory=list)


class WindowList(Sequence):
    """Read-only sequence of ``(start_s, end_s)`` tuples backed by two numpy arrays (``starts``, ``ends``).

    Behaves like ``list[tuple[float, float]]`` (indexing, slicing, iteration, ``len``, ``==`` with a list) without
    building one tuple per backward op; vectorised consumers can use ``.starts`` / ``.ends`` directly.
    """
    __slots__ = ("starts", "ends")

    def __init__(self, starts: np.ndarray, ends: np.ndarray):
        self.starts = starts
        self.ends = ends

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(zip(self.starts[index].tolist(), self.ends[index].tolist()))
        return (float(self.starts[index]), float(self.ends[index]))

    def __iter__(self):
        return iter(zip(self.starts.tolist(), self.ends.tolist()))

    def tolist(self) -> list[tuple[float, float]]:
        return list(self)

    def __eq__(self, other) -> bool:
        if isinstance(other, WindowList):
            return np.array_equal(self.starts, other.starts) and np.array_equal(self.ends, other.ends)
        if isinstance(other, Sequence):
            return self.tolist() == [tuple(x) for x in other]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WindowList({self.tolist()!r})" if len(self) <= 8 else f"WindowList(<{len(self)} windows>)"


# --------------------------------------------------------------------------------------------------------------
# compiled program: cost-independent arrays for one order

class _Program:
    """Everything about one order that does not depend on costs: dependencies, levels, peak in-flight counts.

    Ops are numbered rank-major (rank 0's ops in order, then rank 1's, ...).  A *level* holds the ops whose
    longest chain of predecessors (previous op on the rank, or input dependency) has the same length; ops of one
    level are independent and sit on different ranks, so a level is timed with a few vectorised numpy calls.
    """

    def __init__(self, pp: int, vpp: int, m: int, orders: Sequence[RankOrder]):
        self.pp, self.vpp, self.m = pp, vpp, m
        V = pp * vpp
        counts = np.array([len(o.kind) for o in orders], dtype=np.int64)
        n = int(counts.sum())
        self.n = n
        first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        ranks = np.repeat(np.arange(pp, dtype=np.int64), counts)
        kind = np.concatenate([o.kind for o in orders]).astype(np.int8) if n else np.zeros(0, np.int8)
        mb = np.concatenate([o.microbatch for o in orders]).astype(np.int64) if n else np.zeros(0, np.int64)
        chunk = np.concatenate([o.chunk for o in orders]).astype(np.int64) if n else np.zeros(0, np.int64)
        self.op_rank, self.op_kind, self.op_mb, self.op_chunk = ranks, kind, mb, chunk
        self.rank_first, self.rank_count = first, counts

        if n and (mb.min() < 0 or mb.max() >= m or chunk.min() < 0 or chunk.max() >= vpp
                  or kind.min() < 0 or kind.max() > 1):
            raise ParaplanError("pipeline order has an op with a bad kind, micro-batch or chunk")
        vs = chunk * pp + ranks
        key = (kind.astype(np.int64) * V + vs) * m + mb
        seen = np.bincount(key, minlength=2 * V * m)
        if not (seen == 1).all():
            bad = int(np.flatnonzero(seen != 1)[0])
            k_, rest = divmod(bad, V * m)
            v_, mb_ = divmod(rest, m)
            raise ParaplanError(
                f"pipeline order must hold every (F/B, micro-batch, chunk) exactly once; "
                f"{'FB'[k_]} of micro-batch {mb_} at virtual stage {v_} appears {int(seen[bad])} times")
        op_of = np.empty(2 * V * m, dtype=np.int64)
        op_of[key] = np.arange(n)

        # input dependency of every op (-1: none), by key arithmetic:
        # F(v) <- F(v-1) = key - m;  B(v) <- B(v+1) = key + m;  B(V-1) <- F(V-1) = key - V*m
        fwd = kind == FORWARD
        bwd = ~fwd
        b_last = bwd & (vs == V - 1)
        dep_key = np.where(fwd, key - m, np.where(b_last, key - V * m, key + m))
        f_first = fwd & (vs == 0)
        dep = op_of[np.where(f_first, 0, dep_key)]
        dep[f_first] = -1
        f_mid = fwd & ~f_first
        b_mid = bwd & ~b_last
        self.op_dep = dep
        if pp > 1:
            self.op_cross = f_mid | b_mid                         # input comes from another rank
            self.op_sends = (fwd & (vs < V - 1)) | (bwd & (vs > 0))  # output goes to another rank
        else:
            self.op_cross = np.zeros(n, dtype=bool)
            self.op_sends = np.zeros(n, dtype=bool)
        prev = np.arange(n, dtype=np.int64) - 1
        prev[first[counts > 0]] = -1
        self.op_prev = prev

        # peak in-flight micro-batch-chunks per rank (depends on the order only)
        running = np.cumsum(np.where(fwd, 1, -1))
        peaks = []
        for r in range(pp):
            a, c = int(first[r]), int(counts[r])
            if c == 0:
                peaks.append(0)
                continue
            before = int(running[a - 1]) if a > 0 else 0
            peaks.append(int(running[a:a + c].max()) - before)
        self.peak_inflight = peaks
        self._levels()

    def _levels(self) -> None:
        """Round-by-round: every rank takes its next op if that op's input was done in an earlier round."""
        n, pp = self.n, self.pp
        counts, first = self.rank_count, self.rank_first
        # slot layout: op i of rank r at slot i + r; slot first[r] + counts[r] + r is rank r's end sentinel
        never, zero = n + pp, n + pp + 1
        slot_of_op = np.arange(n, dtype=np.int64) + self.op_rank
        dep_slot = np.full(n + pp + 2, never, dtype=np.int64)
        dep_slot[slot_of_op] = np.where(self.op_dep >= 0, self.op_dep + self.op_rank[np.maximum(self.op_dep, 0)], zero)
        big = np.iinfo(np.int64).max
        lvl = np.full(n + pp + 2, big, dtype=np.int64)
        lvl[zero] = -1
        cur = first + np.arange(pp, dtype=np.int64)
        stop = cur + counts
        done_slots: list[np.ndarray] = []
        rnd = 0
        last = cur.copy()
        while True:
            for _ in range(32):
                ok = lvl[dep_slot[cur]] < rnd
                ex = cur[ok]
                lvl[ex] = rnd
                done_slots.append(ex)
                cur += ok
                rnd += 1
            if (cur == stop).all():
                break
            if (cur == last).all():
                raise RuntimeError(self._deadlock_message(cur, stop))
            last = cur.copy()
        sizes = np.fromiter((len(x) for x in done_slots), dtype=np.int64, count=len(done_slots))
        keep = sizes > 0
        order_slots = np.concatenate(done_slots) if n else np.zeros(0, np.int64)
        # slot -> op: subtract the rank; the rank of a slot is found from the slot ranges
        slot_first = first + np.arange(pp, dtype=np.int64)
        slot_rank = np.searchsorted(slot_first, order_slots, side="right") - 1
        order = order_slots - slot_rank
        ptr = np.concatenate(([0], np.cumsum(sizes[keep])))
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n, dtype=np.int64)          # op -> position in level order
        self.level_ptr = ptr.tolist()
        self.level_order = order
        self.level_pos = pos
        # gather indices per level: [deps of the level..., prevs of the level...]; n = the "time zero" cell
        zero_cell = n
        dep_pos = np.where(self.op_dep >= 0, pos[np.maximum(self.op_dep, 0)], zero_cell)[order]
        prev_pos = np.where(self.op_prev >= 0, pos[np.maximum(self.op_prev, 0)], zero_cell)[order]
        lens = np.diff(ptr)
        lvl_start = np.repeat(ptr[:-1], lens)
        lvl_len = np.repeat(lens, lens)
        i = np.arange(n, dtype=np.int64)
        self.gather_dep_at = lvl_start + i                  # where op i's dep term goes in the 2n gather array
        self.gather_prev_at = lvl_start + lvl_len + i
        idx2 = np.empty(2 * n, dtype=np.int64)
        idx2[self.gather_dep_at] = dep_pos
        idx2[self.gather_prev_at] = prev_pos
        self.gather_idx = idx2

    def _deadlock_message(self, cur: np.ndarray, stop: np.ndarray) -> str:
        parts = []
        blocked = [r for r in range(self.pp) if cur[r] != stop[r]]
        for r in blocked[:4]:
            k = int(cur[r]) - r                                  # slot -> op
            parts.append(f"rank {r} op #{k - int(self.rank_first[r])} "
                         f"({'FB'[self.op_kind[k]]} micro-batch {self.op_mb[k]} chunk {self.op_chunk[k]})")
        more = f" and {len(blocked) - 4} more ranks" if len(blocked) > 4 else ""
        return "pipeline order deadlocks: no rank can proceed; blocked at " + "; ".join(parts) + more

    # ---- per call -------------------------------------------------------------------------------------------
    def op_durations(self, costs: PipelineCosts) -> np.ndarray:
        fwd = _cost_matrix(costs.forward_s, self.pp, self.vpp, "forward_s")
        bwd = _cost_matrix(costs.backward_s, self.pp, self.vpp, "backward_s")
        return np.where(self.op_kind == FORWARD, fwd[self.op_rank, self.op_chunk], bwd[self.op_rank, self.op_chunk])

    def times(self, dur: np.ndarray, p2p_s: float, overlapped: bool) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of every op, level by level:
        ``start = max(end(dep) + delay, end(prev) + block(prev))``, ``end = start + duration``.

        delay = p2p_s when the input comes from another rank; block(prev) = p2p_s when p2p is not overlapped and
        the previous op on the rank sent its output to another rank.
        """
        n = self.n
        dly = np.where(self.op_cross, p2p_s, 0.0)
        if overlapped:
            pblk = np.zeros(n)
        else:
            blk = np.where(self.op_sends, p2p_s, 0.0)
            pblk = np.where(self.op_prev >= 0, blk[np.maximum(self.op_prev, 0)], 0.0)
        off = np.empty(2 * n)
        off[self.gather_dep_at] = dly[self.level_order]
        off[self.gather_prev_at] = pblk[self.level_order]
        dur_o = dur[self.level_order]
        idx = self.gather_idx
        Eo = np.empty(n + 1)          # end times in level order; cell n is "time zero"
        Eo[n] = 0.0
        So = np.empty(n)
        take = Eo.take
        maximum = np.maximum
        add = np.add
        ptr = self.level_ptr
        for a, b in zip(ptr[:-1], ptr[1:]):
            g = take(idx[a + a:b + b])
            g += off[a + a:b + b]
            k = b - a
            s = So[a:b]
            maximum(g[:k], g[k:], out=s)
            add(s, dur_o[a:b], out=Eo[a:b])
        pos = self.level_pos
        return So[pos], Eo[pos]


def _cost_matrix(values, pp: int, vpp: int, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ParaplanError(f"pipeline costs {name} must be a [rank][chunk] table of seconds: {exc}") from None
    if arr.shape != (pp, vpp):
        raise ParaplanError(f"pipeline costs {name} must have shape [pp={pp}][vpp={vpp}], got {list(arr.shape)}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ParaplanError(f"pipeline costs {name} must be finite and >= 0")
    return arr


@lru_cache(maxsize=32)
def _program_for(schedule: str, pp: int, vpp: int, m: int, group: int | None) -> _Program:
    return _Program(pp, vpp, m, order_arrays(schedule, pp, vpp, m, group))


# --------------------------------------------------------------------------------------------------------------
# public API

def peak_inflight(schedule: str, pp: int, vpp: int, num_microbatches: int,
                  microbatch_group_size: int | None = None) -> list[int]:
    """Per rank: the most micro-batch-chunks with forward done and backward not, a property of the schedule's
    order alone (the same as PipelineResult.peak_inflight_microbatches, known before any cost)."""
    return list(_program_for(schedule, pp, vpp, num_microbatches, microbatch_group_size).peak_inflight)


def simulate_pipeline(schedule: str, pp: int, vpp: int, num_microbatches: int, costs: PipelineCosts,
                      record_events: bool = True, *, microbatch_group_size: int | None = None) -> PipelineResult:
    """Simulate one iteration of ``schedule`` ("gpipe", "1f1b" or "interleaved") on ``pp`` ranks.

    ``costs.forward_s`` / ``backward_s`` are ``[pp][vpp]`` tables (seconds per micro-batch per chunk).  vpp must be
    1 for gpipe and 1f1b; "interleaved" with vpp == 1 runs the 1F1B order.  ``microbatch_group_size`` is
    Megatron's ``microbatch_group_size_per_vp_stage`` (interleaved only, default pp).  Raises ``ParaplanError``
    (a ``ValueError``) for bad input, ``RuntimeError`` if the order deadlocks.
    """
    order_arrays(schedule, pp, vpp, num_microbatches, microbatch_group_size)   # validates the arguments (cached)
    prog = _program_for(schedule, int(pp), int(vpp), int(num_microbatches), microbatch_group_size)
    return _simulate(prog, costs, record_events)


def simulate_order(order: Sequence[Sequence[ScheduleOp | tuple]], pp: int, vpp: int, costs: PipelineCosts,
                   record_events: bool = True) -> PipelineResult:
    """Simulate an explicit per-rank order (e.g. a custom one); same model as ``simulate_pipeline``.

    ``order[r]`` lists ``(kind, microbatch, chunk)`` ops; every forward and backward of every micro-batch through
    every virtual stage must appear exactly once.  An order that can never finish raises ``RuntimeError``.
    """
    if len(order) != pp:
        raise ParaplanError(f"pipeline order must have one list per rank (pp={pp}), got {len(order)}")
    arrays = []
    m = 0
    for ops in order:
        kinds, mbs, chunks = [], [], []
        for op in ops:
            k, mb, c = op
            if k not in ("F", "B"):
                raise ParaplanError(f"pipeline op kind must be 'F' or 'B', got {k!r}")
            kinds.append(FORWARD if k == "F" else BACKWARD)
            mbs.append(int(mb))
            chunks.append(int(c))
        m = max([m] + [x + 1 for x in mbs])
        arrays.append(RankOrder(np.array(kinds, dtype=np.int8), np.array(mbs, dtype=np.int64),
                                np.array(chunks, dtype=np.int64)))
    if m == 0:
        raise ParaplanError("pipeline order is empty")
    return _simulate(_Program(pp, vpp, m, arrays), costs, record_events)


def _simulate(prog: _Program, costs: PipelineCosts, record_events: bool) -> PipelineResult:
    p2p = float(costs.p2p_s)
    if not np.isfinite(p2p) or p2p < 0:
        raise ParaplanError(f"pipeline costs p2p_s must be finite and >= 0, got {costs.p2p_s!r}")
    overlapped = bool(costs.p2p_overlapped)
    dur = prog.op_durations(costs)
    start, end = prog.times(dur, p2p, overlapped)
    pp = prog.pp
    makespan = float(end.max()) if len(end) else 0.0
    busy = np.bincount(prog.op_rank, weights=dur, minlength=pp).tolist()
    bwd = prog.op_kind == BACKWARD
    b_rank = prog.op_rank[bwd]
    b_start = start[bwd]
    b_end = end[bwd]
    cuts = np.searchsorted(b_rank, np.arange(pp + 1)).tolist()   # ops are rank-major, in order within a rank
    windows, first_b, last_b = [], [], []
    for r in range(pp):
        a, b = cuts[r], cuts[r + 1]
        windows.append(WindowList(b_start[a:b], b_end[a:b]))
        first_b.append(float(b_start[a]) if b > a else 0.0)
        last_b.append(float(b_end[a:b].max()) if b > a else 0.0)
    return PipelineResult(
        makespan_s=makespan,
        busy_s=busy,
        bubble_s=[makespan - x for x in busy],
        last_backward_end_s=last_b,
        first_backward_start_s=first_b,
        backward_windows=windows,
        peak_inflight_microbatches=list(prog.peak_inflight),
        events=_events(prog, start, end, p2p, overlapped) if record_events else [],
    )


def _events(prog: _Program, start: np.ndarray, end: np.ndarray, p2p: float, overlapped: bool) -> list[Event]:
    """Compute events (F/B) and send events (SEND_F/SEND_B, on the producing rank), sorted by start time (ties:
    by rank, then op order, each send right after the op that produced it)."""
    rank = prog.op_rank.tolist()
    kind = prog.op_kind.tolist()
    mb = prog.op_mb.tolist()
    chunk = prog.op_chunk.tolist()
    s = start.tolist()
    e = end.tolist()
    sends = prog.op_sends.tolist()
    names = ("F", "B")
    send_names = ("SEND_F", "SEND_B")
    send_stream = "p2p" if overlapped else "compute"
    events = []
    for i in range(len(rank)):
        events.append(Event(rank[i], names[kind[i]], mb[i], chunk[i], s[i], e[i], "compute"))
        if sends[i]:
            events.append(Event(rank[i], send_names[kind[i]], mb[i], chunk[i], e[i], e[i] + p2p, send_stream))
    events.sort(key=lambda ev: ev.start_s)   # stable: ties keep rank-major op order, each send after its op
    return events


def closed_form_1f1b(pp: int, m: int, t_f: float, t_b: float, p2p_s: float) -> float:
    """Makespan of non-interleaved 1F1B with uniform stages under this engine's semantics (overlapped p2p).

    ``(m + pp - 1) * (t_f + t_b) + hops * p2p_s`` with ``hops = 2 * (m + pp - 3 - (m - 2) // pp)`` for pp >= 2
    (floor division; ``hops = 2 * (pp - 1)`` for m <= 2) and ``m * (t_f + t_b)`` for pp == 1.

    Why not just ``2 * (pp - 1) * p2p_s``: with in-order 1F1B every compute path is tight, and in the steady state
    rank r's backward of micro-batch k waits for rank r+1's backward of k, which runs right after rank r+1's
    forward of a micro-batch that rank r sent just before: a round trip (2 hops) with no compute slack, so p2p
    latency is exposed again for most micro-batches (as with Megatron's blocking ``send_forward_recv_backward``).
    The compute part is the classic ``(m + pp - 1) * (t_f + t_b)``; one path attains both the maximal compute and
    the maximal hop count, so the two add.  The hop count was hand-checked for pp = 2, m = 1..3 and pp = 3,
    m = 2 (see tests/test_engine.py) and matches the engine on thousands of random (pp, m, t_f, t_b, p2p_s).
    """
    if pp < 1 or m < 1:
        raise ParaplanError(f"closed_form_1f1b needs pp >= 1 and m >= 1, got pp={pp}, m={m}")
    compute = (m + pp - 1) * (t_f + t_b)
    if pp == 1:
        return float(m * (t_f + t_b))
    hops = 2 * (m + pp - 3 - (m - 2) // pp)
    return float(compute + hops * p2p_s)


if __name__ == "__main__":   # rough speed check: python -m paraplan.sim.engine
    import time

    for sched, pp_, vpp_, m_ in (("1f1b", 64, 1, 1024), ("interleaved", 16, 4, 256), ("gpipe", 64, 1, 1024)):
        c = PipelineCosts.uniform(pp_, vpp_, 1.0 / vpp_, 2.0 / vpp_, 0.01)
        _program_for.cache_clear()
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            res = simulate_pipeline(sched, pp_, vpp_, m_, c, record_events=False)
            times.append(1e3 * (time.perf_counter() - t0))
        print(f"{sched:12s} pp={pp_:3d} vpp={vpp_} m={m_:5d}: first call {times[0]:6.1f} ms (compiles), "
              f"cached {min(times[1:]):6.1f} ms; makespan {res.makespan_s:.2f}")
