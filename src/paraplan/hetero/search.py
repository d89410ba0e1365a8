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
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from paraplan.errors import ParaplanError
from paraplan.hetero import space
from paraplan.hetero.balance import balanced_split, power_split
from paraplan.hetero.estimate import HeteroContext, estimate_hetero, stage_memory
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan, HeteroStage
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec
from paraplan.specs.strategy import default_layer_split

REBALANCE_ROUNDS = 6
OUT_OF_MEMORY, STAGE_BOUND = "out_of_memory", "stage_bound"
EXECUTORS = ("serial", "process", "ray")
LEAD_STRUCTURES = 512        # searched here before anything is sent to workers (sets the first threshold)
CHUNK_STRUCTURES = 64        # structures per worker task


@dataclass(frozen=True)
class Candidate:
    structure: space.Structure
    order: tuple[int, ...]
    split: str
    index: tuple                     # position in the space (for ties)


def stages_of(ctx: HeteroContext, c: Candidate) -> list[tuple[int, int, int]]:
    """(group, tp, dp) of each stage of a candidate, in pipeline order."""
    return _layout(ctx, c.structure, c.order)[0]


def stage_rates(ctx: HeteroContext, c: Candidate) -> tuple[list[float], list[float]]:
    """Per stage: seconds per layer per micro-batch, and seconds per micro-batch besides the layers."""
    return _layout(ctx, c.structure, c.order)[1:]


def _layout(ctx: HeteroContext, st: space.Structure, order: tuple[int, ...]):
    """Stages, seconds per layer and seconds besides layers of a structure in a group order (cached: the search
    opens tens of thousands of orders, so the lists are built per group, not per stage)."""
    key = ("rates", st, order)
    hit = ctx.layer_times.get(key)
    if hit is None:
        stages, t, e = [], [], []
        for g in order:
            tp, dp = st.shapes[g]
            k = st.stages_of(ctx.cluster, g)
            stages += [(g, tp, dp)] * k
            t += [ctx.layer_time(g, tp, dp, st.mb, st.zero, st.recompute, st.cp)] * k
            e += [ctx.edge_time(g, tp, dp, st.mb, False, False, st.cp)] * k
        n = len(stages)
        for i in {0, n - 1}:
            g, tp, dp = stages[i]
            e[i] = ctx.edge_time(g, tp, dp, st.mb, i == 0, i == n - 1, st.cp)
        hit = ctx.layer_times[key] = (stages, t, e)
    return hit


def initial_split(ctx: HeteroContext, c: Candidate, caps=None) -> tuple[int, ...]:
    stages, t, e = _layout(ctx, c.structure, c.order)
    L = ctx.model.layers
    vpp = c.structure.vpp
    if c.split in ("even", "power"):
        if c.split == "even":
            split = default_layer_split(L, len(stages))
        else:
            split = power_split([ctx.cluster.node_groups[g].gpu.peak(ctx.job.precision) * tp * c.structure.cp * dp
                                 for g, tp, dp in stages], L)
        if min(split) < vpp:
            raise ParaplanError(f"the {c.split} split {split} leaves a stage fewer than vpp={vpp} layers")
        return split
    return balanced_split(t, e, L, caps, c.structure.vpp)


def plan_of(ctx: HeteroContext, c: Candidate, layers) -> HeteroPlan:
    st = c.structure
    return HeteroPlan(tuple(HeteroStage(g, tp, dp, n, st.zero, st.recompute, st.cp)
                            for (g, tp, dp), n in zip(stages_of(ctx, c), layers)), st.mb, st.vpp)


def plan_bound(ctx: HeteroContext, c: Candidate, layers) -> float:
    """At most the plan's simulated time (the argument of estimate.time_lower_bound): stage r cannot start before
    micro-batch 0's forward has passed the stages before it, then works its m micro-batches back to back at best,
    and its last backward still has to pass back through those stages. Sends only add to this. Interleaved, what
    passes the earlier stages is their first chunk only: at least their smallest chunk's layers."""
    t, e = stage_rates(ctx, c)
    m = ctx.job.global_batch // c.structure.mb
    vpp = c.structure.vpp
    overhead = max(ctx.cals[g].iteration_overhead_s for g in c.order)
    work = [n * ti + ei for n, ti, ei in zip(layers, t, e)]
    passing = work if vpp == 1 else [(n // vpp) * ti for n, ti in zip(layers, t)]
    worst = before = 0.0
    for w, p in zip(work, passing):
        worst = max(worst, before + m * w)
        before += p
    return worst + overhead


def evaluate_candidate(ctx: HeteroContext, c: Candidate, threshold: float = np.inf):
    """The estimate of a candidate's plan, or OUT_OF_MEMORY. Memory is judged first (it needs no time): a balanced
    split whose stages do not fit is re-balanced with lower caps for those stages, a few rounds."""
    layers = initial_split(ctx, c)
    caps = [ctx.model.layers] * len(layers)
    for _ in range(REBALANCE_ROUNDS):
        plan = plan_of(ctx, c, layers)
        mems = stage_memory(ctx.model, ctx.cluster, ctx.job, plan, ctx)
        if all(mem.fits for mem in mems):
            if plan_bound(ctx, c, layers) > threshold:
                return STAGE_BOUND
            return estimate_hetero(ctx.model, ctx.cluster, ctx.job, plan, ctx)
        if c.split != "balanced":
            return OUT_OF_MEMORY
        for i, mem in enumerate(mems):
            if not mem.fits:
                per_layer = (mem.weights_gib + mem.gradients_gib + mem.optimizer_gib + mem.activations_gib) / layers[i]
                over = mem.total_gib - mem.capacity_gib
                caps[i] = min(caps[i], layers[i] - max(1, int(np.ceil(over / max(per_layer, 1e-9)))))
        if min(caps) < c.structure.vpp or sum(caps) < ctx.model.layers:
            return OUT_OF_MEMORY
        try:
            layers = initial_split(ctx, c, caps)
        except ParaplanError:
            return OUT_OF_MEMORY
    return OUT_OF_MEMORY


# ---- branch and bound ------------------------------------------------------------------------------------------
def branch_and_bound(ctx: HeteroContext, items, threshold: float, top_k: int, opts: space.SpaceOptions,
                     exhaustive: bool = False, shared=None):
    """The `top_k` fastest plans of some structures (items: (position, Structure, bound), by increasing bound)
    among those whose time is at most `threshold`, as (time, index, estimate), best first; the counts
    (expanded, simulated, out of memory, plan bound); and how many structures were taken.

    Three levels, each bounded from below: structures (space.build), a structure's group orders (m x the slowest
    stage of its balanced split, which no split of that order beats), and plans (plan_bound). An entry is opened
    only while its bound is at most the k-th best time found, so the result equals evaluating everything.
    `shared`: a multiprocessing.Value the worker processes of one search keep their best k-th time in; each
    process's k-th best is at least the final one, so taking the smallest prunes nothing the final top k needs."""
    best: list = []
    heap: list = []
    pos = expanded = simulated = oom = bounded = 0
    L = ctx.model.layers

    def limit():
        if exhaustive:
            return np.inf
        known = threshold if shared is None else min(threshold, shared.value)
        return min(known, best[-1][0] if len(best) >= top_k else np.inf)

    while True:
        lim = limit()
        top = heap[0][0] if heap else np.inf
        nxt = items[pos][2] if pos < len(items) else np.inf
        if min(top, nxt) > lim or (not heap and pos >= len(items)):
            break
        if nxt <= top:                        # open a structure: one entry per group order
            si, st, _ = items[pos]
            pos += 1
            m = ctx.job.global_batch // st.mb
            for oi, grp_order in enumerate(space.orders_of(ctx, st, opts.orders)):
                c = Candidate(st, grp_order, "balanced", (si, oi, 0))
                t, e = stage_rates(ctx, c)
                try:
                    layers = balanced_split(t, e, L, None, st.vpp)
                except ParaplanError:
                    continue
                b1 = m * max(n * ti + ei for n, ti, ei in zip(layers, t, e)) + \
                    max(ctx.cals[g].iteration_overhead_s for g in grp_order)
                heapq.heappush(heap, (b1, (si, oi, -1), 1, (st, grp_order, layers)))
            continue
        entry = heapq.heappop(heap)
        if entry[2] == 1:                     # open a group order: one plan per layer split
            (si, oi, _), (st, grp_order, balanced) = entry[1], entry[3]
            seen = set()
            for pi, split in enumerate(opts.splits):
                c = Candidate(st, grp_order, split, (si, oi, pi))
                try:
                    layers = balanced if split == "balanced" else initial_split(ctx, c)
                except ParaplanError:
                    continue
                if layers in seen:            # the same plan from an earlier split (balanced covers it)
                    continue
                seen.add(layers)
                expanded += 1
                heapq.heappush(heap, (plan_bound(ctx, c, layers), c.index, 2, c))
            continue
        c = entry[3]
        est = evaluate_candidate(ctx, c, lim)
        if est == OUT_OF_MEMORY:
            oom += 1
        elif est == STAGE_BOUND:
            bounded += 1
        else:
            simulated += 1
            best = sorted(best + [(est.iteration_time_s, c.index, est)], key=lambda x: (x[0], x[1]))[:top_k]
            if shared is not None and len(best) >= top_k:
                _publish(shared, best[-1][0])
    return best, (expanded, simulated, oom, bounded), pos


def _publish(shared, kth_time: float) -> None:
    with shared.get_lock():
        shared.value = min(shared.value, kth_time)


# ---- executors: serial, or chunks of structures on local processes ---------------------------------------------
_context: dict = {}


def _init(model, cluster, job, caches=None, layer_times=None, shared=None) -> None:
    ctx = HeteroContext(model, cluster, job)
    ctx.caches.update(caches or {})
    ctx.layer_times.update(layer_times or {})
    _context["ctx"], _context["shared"] = ctx, shared


def _chunk(items, threshold, top_k, opts):
    return branch_and_bound(_context["ctx"], items, threshold, top_k, opts, shared=_context.get("shared"))


def _parallel(ctx: HeteroContext, items, opts, top_k: int, workers: int):
    """Chunks of structures, in increasing order of bound, searched by worker processes with the best time known
    when each chunk leaves as its threshold. A stale threshold only costs work: a plan outside the final top k has
    a bound or a time above the final threshold, so whatever the timing the result is the serial one."""
    # the LEAD_STRUCTURES lowest bounds first, here: they set a threshold before anything is sent out
    lead, chunk = LEAD_STRUCTURES, CHUNK_STRUCTURES
    best, first, pos = branch_and_bound(ctx, items[:lead], np.inf, top_k, opts)
    counts = list(first)
    pos = lead

    shared = multiprocessing.Value("d", np.inf)     # the best k-th time any process has found so far

    def limit():
        if len(best) >= top_k:
            _publish(shared, best[-1][0])
        return shared.value

    if pos >= len(items) or items[pos][2] > limit():
        return best, tuple(counts), min(pos, len(items))
    with ProcessPoolExecutor(workers, initializer=_init,     # workers start with this process's warm caches
                             initargs=(ctx.model, ctx.cluster, ctx.job, ctx.caches, ctx.layer_times, shared)) as ex:
        pending: set = set()
        while True:
            while len(pending) < 2 * workers and pos < len(items) and items[pos][2] <= limit():
                pending.add(ex.submit(_chunk, items[pos:pos + chunk], limit(), top_k, opts))
                pos += chunk
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                found, n, _ = f.result()
                best = sorted(best + found, key=lambda x: (x[0], x[1]))[:top_k]
                counts = [a + b for a, b in zip(counts, n)]
    return best, tuple(counts), min(pos, len(items))


def _ray_parallel(ctx: HeteroContext, items, opts, top_k: int, workers: int | None, address: str | None):
    """As _parallel, with Ray tasks (on the cluster at `address`, or a local Ray instance) instead of processes."""
    try:
        import ray
    except ImportError:
        raise ParaplanError("--executor ray needs Ray: pip install 'paraplan[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": workers or os.cpu_count()}))
    workers = max(1, workers or int(ray.cluster_resources().get("CPU", 1)))
    lead, chunk = LEAD_STRUCTURES, CHUNK_STRUCTURES
    best, first, _ = branch_and_bound(ctx, items[:lead], np.inf, top_k, opts)
    counts, pos = list(first), lead
    context = ray.put((ctx.model, ctx.cluster, ctx.job, ctx.caches, ctx.layer_times))

    @ray.remote
    def run(ctx_args, part, threshold):
        if "ctx" not in _context:         # a Ray worker keeps its context (and its warm caches) between tasks
            _init(*ctx_args)
        return _chunk(part, threshold, top_k, opts)

    def limit():
        return best[-1][0] if len(best) >= top_k else np.inf

    pending: list = []
    while True:
        while len(pending) < 2 * workers and pos < len(items) and items[pos][2] <= limit():
            pending.append(run.remote(context, items[pos:pos + chunk], limit()))
            pos += chunk
        if not pending:
            break
        done, pending = ray.wait(pending, num_returns=1)
        for found, n, _ in ray.get(done):
            best = sorted(best + found, key=lambda x: (x[0], x[1]))[:top_k]
            counts = [a + b for a, b in zip(counts, n)]
    return best, tuple(counts), min(pos, len(items)), workers


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
                  ctx: HeteroContext | None = None, address: str | None = None) -> HeteroSearchResult:
    """The `top_k` fastest heterogeneous plans that fit (see the module docstring). `executor`: "serial",
    "process" (`workers` local processes, default one per CPU) or "ray" (Ray tasks; `address` of a Ray cluster,
    None for a local instance). The exhaustive mode always runs serially."""
    if executor not in EXECUTORS:
        raise ParaplanError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if top_k < 1:
        raise ParaplanError(f"top_k must be at least 1, got {top_k}")
    start = time.perf_counter()
    opts = options or space.SpaceOptions()
    ctx = ctx or HeteroContext(model, cluster, job)
    bounds, structs, counts = space.build(ctx, opts)
    order = np.lexsort((np.arange(len(bounds)), bounds))
    items = [(int(i), structs[i], float(bounds[i])) for i in order]
    n_workers = 1 if executor == "serial" or exhaustive else max(1, workers or os.cpu_count() or 1)
    if executor == "ray" and not exhaustive:
        found, (expanded, simulated, oom, bounded), taken, n_workers = _ray_parallel(ctx, items, opts, top_k,
                                                                                     workers, address)
    elif n_workers > 1:
        found, (expanded, simulated, oom, bounded), taken = _parallel(ctx, items, opts, top_k, n_workers)
    else:
        found, (expanded, simulated, oom, bounded), taken = branch_and_bound(ctx, items, np.inf, top_k, opts,
                                                                              exhaustive)
    pruned = {"memory_bound": counts["memory_bound"], "out_of_memory": oom, "plan_bound": bounded,
              "time_bound": len(structs) - taken}
    stats = HeteroSearchStats(counts["generated"], pruned, expanded, simulated, time.perf_counter() - start,
                              "ray" if executor == "ray" and not exhaustive
                              else "serial" if n_workers == 1 else "process", n_workers, exhaustive)
    return HeteroSearchResult([f[2] for f in found], stats, [f[1] for f in found])
