"""Data-parallel replicas of different speeds with uneven batch shares.

A ReplicaPlan is R whole pipelines (HeteroPlans) on disjoint node groups, e.g. replica A on the H100 nodes and
replica B on the A100 nodes, each with its own tp/pp/layer split and micro-batch. Replica r processes k_r
micro-batches of its own size mb_r per iteration (its batch share k_r * mb_r; the shares sum to the global batch),
so a fast replica can take more of the batch than a slow one.

Iteration time = max over replicas of the replica's own estimate (estimate_hetero with its batch share: pipeline,
its internal DP reduction and optimizer step, memory with its share) + the cross-replica gradient reduction.

Cross-replica reduction (hierarchical): after each replica has reduced its gradients internally (costed by the
replica's own estimate), every GPU of replica r owns a 1/n_r share of the model's gradients (n_r GPUs in it). The
shares are all-reduced across the R replicas in min_r n_r rings in parallel, each ring moving
total_params * grad_bytes / min_r n_r bytes over one GPU's NIC per replica (comm.Group(R, 1, R)); the ring runs at
the pace of its slowest hop, so the time is the largest comm.collective_time over the pairs of replicas, each on
the link between their groups (estimate.link_between). Assumed: the all-gather that gives the reduced shares back
inside a replica is not counted (with ZeRO/distributed optimizer it is the parameter all-gather the replica's
estimate already has); the optimizer step is not moved after the cross reduction (the sum is the same).

Split: T_r(k) is non-decreasing in k (more micro-batches through the same 1F1B pipeline; memory in flight only
grows), so the best split is found by bisection on the feasible k_1 (R = 2) and checked against brute force in the
tests; among equal times the most even split wins.

Search (search_replicas): for each way of dividing the node groups into two sides, the top-K plans of each side's
heterogeneous search (run at the two power-of-two-rounded batch shares nearest to the side's share of peak compute,
nominal_shares) are paired, and each pair gets its best split. Exact within that family: `exhaustive=True` runs
the sides' searches exhaustively and tries every split of every pair (tests: same answer). Not covered: more than
two replicas, replicas sharing a node group.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from paraplan.cost import comm, compute
from paraplan.errors import ParaplanError
from paraplan.frameworks import grad_reduce_bytes_per_param
from paraplan.hetero.estimate import HeteroContext, estimate_hetero, link_between
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan, HeteroStage
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec


@dataclass(frozen=True)
class ReplicaPlan:
    replicas: tuple[HeteroPlan, ...]      # stages' groups index the whole cluster; groups disjoint across replicas
    microbatches: tuple[int, ...]         # k_r: micro-batches of replica r per iteration

    def __post_init__(self):
        object.__setattr__(self, "replicas", tuple(self.replicas))
        object.__setattr__(self, "microbatches", tuple(self.microbatches))
        if len(self.replicas) < 2:
            raise ParaplanError("a replica plan needs at least two replicas")
        if len(self.microbatches) != len(self.replicas):
            raise ParaplanError(f"{len(self.replicas)} replicas but {len(self.microbatches)} micro-batch counts")
        for r, k in enumerate(self.microbatches):
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ParaplanError(f"replica {r}: micro-batches must be a positive integer, got {k!r}")
        seen: dict = {}
        for r, p in enumerate(self.replicas):
            for g in {s.group for s in p.stages}:
                if g in seen and seen[g] != r:
                    raise ParaplanError(f"node group {g} is used by replicas {seen[g]} and {r}; replicas need "
                                        f"disjoint node groups")
                seen[g] = r

    @property
    def shares(self) -> tuple[int, ...]:
        """Sequences per iteration of each replica."""
        return tuple(k * p.microbatch_sequences for k, p in zip(self.microbatches, self.replicas))

    @property
    def num_gpus(self) -> int:
        return sum(p.num_gpus for p in self.replicas)

    def groups(self, r: int) -> tuple[int, ...]:
        return tuple(sorted({s.group for s in self.replicas[r].stages}))

    def summary(self) -> str:
        return " || ".join(f"replica {r} [{s} seq]: {p.summary()}"
                           for r, (p, s) in enumerate(zip(self.replicas, self.shares)))


@dataclass
class ReplicaEstimate:
    plan: ReplicaPlan
    iteration_time_s: float
    tokens_per_s: float
    model_tflops_per_gpu: float
    replicas: list[HeteroEstimate]        # each with its own batch share
    cross_reduce_s: float
    assumptions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(e.fits for e in self.replicas)

    def to_dict(self) -> dict:
        return {"plan": self.plan.summary(), "batch_shares": list(self.plan.shares),
                "microbatches": list(self.plan.microbatches), "gpus_used": self.plan.num_gpus,
                "iteration_time_s": self.iteration_time_s, "tokens_per_s": self.tokens_per_s,
                "model_tflops_per_gpu": self.model_tflops_per_gpu, "cross_reduce_s": self.cross_reduce_s,
                "fits_in_memory": self.fits, "replicas": [e.to_dict() for e in self.replicas],
                "assumptions": list(self.assumptions)}


def cross_group_collective_time(ctx: HeteroContext, op: str, nbytes: float, groups: list[tuple[int, ...]]) -> float:
    """One collective over len(groups) ranks, one in each set of node groups (one GPU's NIC each), as a ring that
    runs at its slowest hop: the largest comm.collective_time over pairs of sets, on the link between them (with
    either end's calibration)."""
    n = len(groups)
    worst = 0.0
    for a, b in itertools.combinations(range(n), 2):
        for ga, gb in itertools.product(groups[a], groups[b]):
            link = link_between(ctx.cluster, ga, gb)
            for cal in (ctx.cals[ga], ctx.cals[gb]):      # each end's efficiency and latencies: the slower
                worst = max(worst, comm.collective_time(op, nbytes, comm.Group(n, 1, n), link, link, cal))
    return worst


def cross_reduce_time(ctx: HeteroContext, plan: ReplicaPlan) -> float:
    """Seconds of the cross-replica gradient all-reduce (module docstring)."""
    n_min = min(p.num_gpus for p in plan.replicas)
    nbytes = ctx.model.total_params() * grad_reduce_bytes_per_param(ctx.job.framework) / n_min
    return cross_group_collective_time(ctx, "all_reduce", nbytes, [plan.groups(r) for r in range(len(plan.replicas))])


def _replica_job(job: JobSpec, share: int) -> JobSpec:
    return JobSpec(share, job.seq_len, job.precision, job.framework, job.memory_headroom)


def replica_time(ctx: HeteroContext, plan: HeteroPlan, k: int, cache: dict | None = None) -> HeteroEstimate:
    """The replica's estimate with k micro-batches (its batch share k * mb)."""
    key = (plan, k)
    if cache is not None and key in cache:
        return cache[key]
    job = _replica_job(ctx.job, k * plan.microbatch_sequences)
    sub = HeteroContext(ctx.model, ctx.cluster, job, ctx.cals)
    sub.caches = ctx.caches                       # layer costs do not depend on the batch share
    est = estimate_hetero(ctx.model, ctx.cluster, job, plan, sub)
    if cache is not None:
        cache[key] = est
    return est


def estimate_replicas(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: ReplicaPlan,
                      ctx: HeteroContext | None = None, cache: dict | None = None) -> ReplicaEstimate:
    """Iteration time, throughput and per-replica memory of `plan`. Raises ParaplanError when it is invalid."""
    ctx = ctx or HeteroContext(model, cluster, job)
    if sum(plan.shares) != job.global_batch:
        raise ParaplanError(f"batch shares {plan.shares} sum to {sum(plan.shares)}, the global batch is "
                            f"{job.global_batch}")
    ests = []
    for r, (p, k) in enumerate(zip(plan.replicas, plan.microbatches)):
        try:
            ests.append(replica_time(ctx, p, k, cache))
        except ParaplanError as exc:
            raise ParaplanError(f"replica {r}: {exc}") from None
    x = cross_reduce_time(ctx, plan)
    iteration = max(e.iteration_time_s for e in ests) + x
    flops = compute.model_flops_per_iteration(model, job)
    return ReplicaEstimate(plan, iteration, job.tokens_per_step / iteration, flops / iteration / plan.num_gpus / 1e12,
                           ests, x, ["cross-replica reduction: hierarchical all-reduce of each GPU's gradient share "
                                     "on the slowest link between the replicas' groups"])


# ---- the best split of the batch between two replicas ---------------------------------------------------------
def feasible_ks(global_batch: int, mb: tuple[int, int]) -> list[int]:
    """k_1 values (increasing) with k_1 * mb_1 + k_2 * mb_2 = global_batch, both >= 1."""
    return [k for k in range(1, global_batch // mb[0] + 1)
            if (global_batch - k * mb[0]) > 0 and (global_batch - k * mb[0]) % mb[1] == 0]


def best_split(ctx: HeteroContext, a: HeteroPlan, b: HeteroPlan, exhaustive: bool = False,
               cache: dict | None = None) -> ReplicaEstimate | None:
    """The split of the global batch between replicas a and b with the smallest iteration time among those that
    fit in memory (ties: the most even in sequences, then the fewer for a), or None. Bisection on k_1 (module
    docstring); `exhaustive` evaluates every split."""
    cache = {} if cache is None else cache
    G = ctx.job.global_batch
    ks = feasible_ks(G, (a.microbatch_sequences, b.microbatch_sequences))
    if not ks:
        return None

    def est(k1: int) -> ReplicaEstimate | None:
        plan = ReplicaPlan((a, b), (k1, (G - k1 * a.microbatch_sequences) // b.microbatch_sequences))
        try:
            e = estimate_replicas(ctx.model, ctx.cluster, ctx.job, plan, ctx, cache)
        except ParaplanError:
            return None
        return e if e.fits else None

    def rank(e: ReplicaEstimate):
        s = e.plan.shares
        return (e.iteration_time_s, abs(s[0] - s[1]), s[0])

    if exhaustive:
        found = [e for e in map(est, ks) if e is not None]
        return min(found, key=rank) if found else None
    # T_a grows with k_1 and T_b shrinks: find the first k_1 where T_a >= T_b (either side may not fit: a not
    # fitting only gets worse with more micro-batches, b with fewer), then look at its neighbours
    def side(i: int) -> int:
        """-1: a is the faster side (or b does not fit: move right), +1: a slower or a does not fit."""
        k1 = ks[i]
        k2 = (G - k1 * a.microbatch_sequences) // b.microbatch_sequences
        try:
            ea = replica_time(ctx, a, k1, cache)
        except ParaplanError:
            return 1
        try:
            eb = replica_time(ctx, b, k2, cache)
        except ParaplanError:
            return -1
        if not ea.fits:
            return 1
        if not eb.fits:
            return -1
        return -1 if ea.iteration_time_s < eb.iteration_time_s else 1

    lo, hi = 0, len(ks)              # first index with side == +1
    while lo < hi:
        mid = (lo + hi) // 2
        if side(mid) > 0:
            hi = mid
        else:
            lo = mid + 1
    # the optimum is at the crossing or next to it; equal-time plateaus are walked to find the tie-break
    cands = [e for e in (est(ks[i]) for i in range(max(0, lo - 1), min(len(ks), lo + 1))) if e is not None]
    if not cands:
        return None
    best = min(cands, key=rank)
    return best


# ---- search ----------------------------------------------------------------------------------------------------
@dataclass
class ReplicaSearchResult:
    plans: list[ReplicaEstimate]          # best first
    pairs: int                            # replica pairs whose split was optimised
    seconds: float
    exhaustive: bool

    @property
    def best(self) -> ReplicaEstimate | None:
        return self.plans[0] if self.plans else None

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict() if self.best else None, "pairs": self.pairs,
                "seconds": self.seconds, "exhaustive": self.exhaustive}


def sub_cluster(cluster: ClusterSpec, groups: tuple[int, ...]) -> ClusterSpec:
    """The node groups `groups` of `cluster` alone (renumbered 0..), with their group_links."""
    index = {g: i for i, g in enumerate(groups)}
    links = tuple(((index[a], index[b]), link) for (a, b), link in cluster.extra.get("group_links", ())
                  if a in index and b in index)
    extra = dict(cluster.extra, group_links=links)
    return ClusterSpec(f"{cluster.name}{list(groups)}", tuple(cluster.node_groups[g] for g in groups),
                       cluster.source, extra)


def _relabel(plan: HeteroPlan, groups: tuple[int, ...]) -> HeteroPlan:
    return HeteroPlan(tuple(HeteroStage(groups[s.group], s.tp, s.dp, s.layers, s.zero, s.recompute)
                            for s in plan.stages), plan.microbatch_sequences)


def two_sided_partitions(n: int):
    """Every split of node groups 0..n-1 into two non-empty sides (each unordered pair once, group 0 on side A)."""
    for mask in range(1, 2 ** n - 1):
        if mask & 1:
            a = tuple(g for g in range(n) if mask >> g & 1)
            yield a, tuple(g for g in range(n) if not mask >> g & 1)


def nominal_shares(global_batch: int, fraction: float) -> list[int]:
    """Batch shares of side A at which each side's plans are searched: the multiples of a power-of-two unit (the
    largest leaving at least 8 units, so that wide data parallelism stays possible) just below and above
    `fraction` of the batch, both sides non-empty."""
    unit = 1
    while global_batch % (2 * unit) == 0 and global_batch // (2 * unit) >= 8:
        unit *= 2
    x = fraction * global_batch / unit
    out = []
    for k in (int(x), int(x) + 1):
        share = min(max(k, 1) * unit, global_batch - unit)
        if 0 < share < global_batch and share not in out:
            out.append(share)
    return out


def search_replicas(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, options=None, top_k: int = 1,
                    per_side: int = 3, exhaustive: bool = False, executor: str = "serial",
                    workers: int | None = None, ctx: HeteroContext | None = None) -> ReplicaSearchResult:
    """The `top_k` best two-replica plans (module docstring). `per_side`: plans of each side's heterogeneous
    search that are paired."""
    from paraplan.hetero.search import search_hetero
    start = time.perf_counter()
    ctx = ctx or HeteroContext(model, cluster, job)
    n = len(cluster.node_groups)
    found: list[ReplicaEstimate] = []
    pairs = 0
    cache: dict = {}
    for side_a, side_b in two_sided_partitions(n):
        power = [sum(cluster.node_groups[g].gpu.peak(job.precision) * cluster.node_groups[g].num_gpus for g in s)
                 for s in (side_a, side_b)]
        sides = [[], []]
        for share_a in nominal_shares(job.global_batch, power[0] / sum(power)):
            for i, (groups, share) in enumerate(((side_a, share_a), (side_b, job.global_batch - share_a))):
                sub = sub_cluster(cluster, groups)
                try:
                    r = search_hetero(model, sub, _replica_job(job, share), options, per_side, exhaustive,
                                      executor, workers)
                except ParaplanError:
                    continue
                sides[i] += [p for p in (_relabel(e.plan, groups) for e in r.plans) if p not in sides[i]]
        for a, b in itertools.product(*sides):
            pairs += 1
            e = best_split(ctx, a, b, exhaustive, cache)
            if e is not None:
                found.append(e)
    found.sort(key=lambda e: (e.iteration_time_s, e.plan.summary()))
    return ReplicaSearchResult(found[:top_k], pairs, time.perf_counter() - start, exhaustive)
