"""Exact branch and bound over heterogeneous plans (hetero/space.py), and the baselines it is compared with.

1. build the structures and their time bounds (space.build), drop those no layer split can fit in memory;
2. take structures in increasing order of their bound; expand each into its plans (group order x layer split),
   each with a tighter bound from its actual split (m times its slowest stage's layer work);
3. simulate plans in increasing order of bound, in batches over worker processes, and stop when the next bound
   exceeds the K-th best time found. Ties are broken by a plan's position in the space, so the result equals the
   exhaustive evaluation (`exhaustive=True`) and never depends on the executor (tests compare both).
A balanced split whose stages do not fit is re-balanced with lower memory caps for those stages (a few rounds).
"""
from __future__ import annotations

import heapq
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from paraplan.errors import ParaplanError
from paraplan.hetero import space
from paraplan.hetero.balance import balanced_split, power_split
from paraplan.hetero.estimate import HeteroContext, estimate_hetero
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan, HeteroStage
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec
from paraplan.specs.strategy import default_layer_split

REBALANCE_ROUNDS = 6
OUT_OF_MEMORY = "out_of_memory"


@dataclass(frozen=True)
class Candidate:
    structure: space.Structure
    order: tuple[int, ...]
    split: str
    index: tuple                     # position in the space (for ties)


def stages_of(ctx: HeteroContext, c: Candidate) -> list[tuple[int, int, int]]:
    out = []
    for g in c.order:
        tp, dp = c.structure.shapes[g]
        out += [(g, tp, dp)] * c.structure.stages_of(ctx.cluster, g)
    return out


def stage_rates(ctx: HeteroContext, c: Candidate, stages) -> tuple[list[float], list[float]]:
    """Per stage: seconds per layer per micro-batch, and seconds per micro-batch besides the layers."""
    st = c.structure
    key = ("rates", st, c.order)
    if key not in ctx.layer_times:
        t = [ctx.layer_time(g, tp, dp, st.mb, st.zero, st.recompute) for g, tp, dp in stages]
        e = [ctx.edge_time(g, tp, dp, st.mb, i == 0, i == len(stages) - 1) for i, (g, tp, dp) in enumerate(stages)]
        ctx.layer_times[key] = (t, e)
    return ctx.layer_times[key]


def initial_split(ctx: HeteroContext, c: Candidate, caps=None) -> tuple[int, ...]:
    stages = stages_of(ctx, c)
    L = ctx.model.layers
    if c.split == "even":
        split = default_layer_split(L, len(stages))
        if min(split) < 1:
            raise ParaplanError(f"no even split of {L} layers over {len(stages)} stages")
        return split
    if c.split == "power":
        return power_split([ctx.cluster.node_groups[g].gpu.peak(ctx.job.precision) * tp * dp
                            for g, tp, dp in stages], L)
    t, e = stage_rates(ctx, c, stages)
    return balanced_split(t, e, L, caps)


def plan_of(ctx: HeteroContext, c: Candidate, layers) -> HeteroPlan:
    st = c.structure
    return HeteroPlan(tuple(HeteroStage(g, tp, dp, n, st.zero, st.recompute)
                            for (g, tp, dp), n in zip(stages_of(ctx, c), layers)), st.mb)


def plan_bound(ctx: HeteroContext, c: Candidate, layers) -> float:
    """At most the plan's simulated time (the argument of estimate.time_lower_bound): stage r cannot start before
    micro-batch 0's forward has passed the stages before it, then works its m micro-batches back to back at best,
    and its last backward still has to pass back through those stages. Sends only add to this."""
    stages = stages_of(ctx, c)
    t, e = stage_rates(ctx, c, stages)
    m = ctx.job.global_batch // c.structure.mb
    overhead = max(ctx.cals[g].iteration_overhead_s for g in c.order)
    work = [n * ti + ei for n, ti, ei in zip(layers, t, e)]
    before = np.concatenate([[0.0], np.cumsum(work)[:-1]])
    return float(np.max(before + m * np.asarray(work))) + overhead


def evaluate_candidate(ctx: HeteroContext, c: Candidate):
    """The estimate of a candidate's plan, or OUT_OF_MEMORY. Balanced splits are re-balanced around stages that
    do not fit."""
    layers = initial_split(ctx, c)
    caps = [ctx.model.layers] * len(layers)
    for _ in range(REBALANCE_ROUNDS):
        est = estimate_hetero(ctx.model, ctx.cluster, ctx.job, plan_of(ctx, c, layers), ctx)
        if est.fits:
            return est
        if c.split != "balanced":
            return OUT_OF_MEMORY
        for i, s in enumerate(est.stages):
            mem = s.memory
            if not mem.fits:
                per_layer = (mem.weights_gib + mem.gradients_gib + mem.optimizer_gib + mem.activations_gib) / layers[i]
                over = mem.total_gib - mem.capacity_gib
                caps[i] = min(caps[i], layers[i] - max(1, int(np.ceil(over / max(per_layer, 1e-9)))))
        if min(caps) < 1 or sum(caps) < ctx.model.layers:
            return OUT_OF_MEMORY
        try:
            layers = initial_split(ctx, c, caps)
        except ParaplanError:
            return OUT_OF_MEMORY
    return OUT_OF_MEMORY


# ---- executors: the same contract as search/executors.py (results in the batch's order) --------------------------
_context: dict = {}


def _init(model, cluster, job) -> None:
    _context["ctx"] = HeteroContext(model, cluster, job)


def _evaluate_batch(cands):
    ctx = _context["ctx"]
    return [evaluate_candidate(ctx, c) for c in cands]


class _Pool:
    def __init__(self, ctx: HeteroContext, executor: str, workers: int | None):
        if executor not in ("serial", "process"):
            raise ParaplanError(f"unknown executor {executor!r}; allowed: serial, process")
        self.ctx = ctx
        self.workers = 1 if executor == "serial" else max(1, workers or os.cpu_count() or 1)
        self.name = "serial" if self.workers == 1 else "process"
        self._pool = None

    def map(self, cands):
        if self.workers == 1 or len(cands) < 2 * self.workers:
            return [evaluate_candidate(self.ctx, c) for c in cands]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, initializer=_init,
                                             initargs=(self.ctx.model, self.ctx.cluster, self.ctx.job))
        chunks = [cands[i::self.workers] for i in range(self.workers)]
        out = [None] * len(cands)
        for w, part in enumerate(self._pool.map(_evaluate_batch, chunks)):
            out[w::self.workers] = part
        return out

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()


@dataclass
class HeteroSearchStats:
    structures: int                   # generated
    pruned: dict
    candidates: int                   # plans expanded from the structures taken
    simulated: int
    seconds: float
    executor: str
    workers: int
    exhaustive: bool

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class HeteroSearchResult:
    plans: list[HeteroEstimate]       # best first
    stats: HeteroSearchStats
    indices: list = field(default_factory=list)

    @property
    def best(self) -> HeteroEstimate | None:
        return self.plans[0] if self.plans else None


def search_hetero(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, options: space.SpaceOptions | None = None,
                  top_k: int = 3, exhaustive: bool = False, executor: str = "process", workers: int | None = None,
                  ctx: HeteroContext | None = None) -> HeteroSearchResult:
    """The `top_k` fastest heterogeneous plans that fit (see the module docstring)."""
    start = time.perf_counter()
    opts = options or space.SpaceOptions()
    ctx = ctx or HeteroContext(model, cluster, job)
    bounds, structs, counts = space.build(ctx, opts)
    order = np.lexsort((np.arange(len(bounds)), bounds))
    pool = _Pool(ctx, executor, workers)
    best: list = []                          # max-heap of (-time, negated index, estimate)
    heap: list = []                          # (bound, index, Candidate, layers)
    seen: set = set()
    pos = simulated = expanded = oom = taken = 0
    batch_size = 1 if pool.workers == 1 else 4 * pool.workers

    def threshold():
        return -best[0][0] if len(best) >= top_k else np.inf

    def expand_structure(si: int):
        """Level 1 -> 2: one entry per group order, bounded by m x its balanced split's slowest stage (no split
        of that order does better on that term)."""
        st = structs[si]
        for oi, grp_order in enumerate(space.orders_of(ctx, st, opts.orders)):
            c = Candidate(st, grp_order, "balanced", (int(si), oi, 0))
            stages = stages_of(ctx, c)
            t, e = stage_rates(ctx, c, stages)
            try:
                layers = balanced_split(t, e, ctx.model.layers)
            except ParaplanError:
                continue
            m = ctx.job.global_batch // st.mb
            b1 = m * max(n * ti + ei for n, ti, ei in zip(layers, t, e)) + \
                max(ctx.cals[g].iteration_overhead_s for g in grp_order)
            heapq.heappush(heap, (b1, (int(si), oi, -1), 1, (st, grp_order, layers)))

    def expand_order(si: int, oi: int, payload):
        """Level 2 -> 3: the plans of one order, one per layer split, each with its own bound."""
        nonlocal expanded
        st, grp_order, balanced = payload
        for pi, split in enumerate(opts.splits):
            c = Candidate(st, grp_order, split, (si, oi, pi))
            try:
                layers = balanced if split == "balanced" else initial_split(ctx, c)
            except ParaplanError:
                continue
            key = (grp_order, st, layers)
            if key in seen:                   # the same plan from an earlier split (balanced covers it)
                continue
            seen.add(key)
            expanded += 1
            heapq.heappush(heap, (plan_bound(ctx, c, layers), c.index, 2, c))

    try:
        while True:
            limit = np.inf if exhaustive else threshold()
            top = heap[0][0] if heap else np.inf
            nxt = bounds[order[pos]] if pos < len(order) else np.inf
            if min(top, nxt) > limit or (not heap and pos >= len(order)):
                break
            if nxt <= top:                    # a structure may hold something better than the queue's best
                expand_structure(int(order[pos]))
                pos += 1
                taken = pos
                continue
            if heap[0][2] == 1:
                _, (si, oi, _), _, payload = heapq.heappop(heap)
                expand_order(si, oi, payload)
                continue
            batch = []
            while (heap and heap[0][2] == 2 and len(batch) < batch_size and heap[0][0] <= limit
                   and (pos >= len(order) or heap[0][0] < bounds[order[pos]])):
                batch.append(heapq.heappop(heap)[3])
            for c, est in zip(batch, pool.map(batch)):
                if est == OUT_OF_MEMORY:
                    oom += 1
                    continue
                simulated += 1
                entry = (-est.iteration_time_s, tuple(-x for x in c.index), id(est))
                if len(best) < top_k:
                    heapq.heappush(best, entry + (est, c.index))
                elif entry[:2] > best[0][:2]:
                    heapq.heapreplace(best, entry + (est, c.index))
    finally:
        pool.close()
    ranked = sorted(best, key=lambda e: (-e[0], tuple(-x for x in e[1])))
    pruned = {"memory_bound": counts["memory_bound"], "out_of_memory": oom,
              "time_bound": len(structs) - taken}
    stats = HeteroSearchStats(counts["generated"], pruned, expanded, simulated, time.perf_counter() - start,
                              pool.name, pool.workers, exhaustive)
    return HeteroSearchResult([e[3] for e in ranked], stats, [e[4] for e in ranked])
