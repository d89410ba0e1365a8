"""Data-parallel replicas of different speeds with uneven batch shares.

A ReplicaPlan is R >= 2 whole pipelines (HeteroPlans) on disjoint node groups, e.g. replica A on the H100 nodes and
replica B on the A100 nodes, each with its own tp/pp/layer split and micro-batch. Replicas may share a node group
cut into pieces of whole nodes (`cuts`: a 4-node A100 group cut in two gives two 2-node groups, e.g. two A100
replicas next to a V100 one); plans then index the groups of the cut cluster (cut_cluster). Replica r processes
k_r micro-batches of its own size mb_r per iteration (its batch share k_r * mb_r; the shares sum to the global
batch), so a fast replica can take more of the batch than a slow one.

Iteration time = max over replicas of the replica's own estimate (estimate_hetero with its batch share: pipeline,
its internal DP reduction and optimizer step, memory with its share) + the cross-replica gradient reduction.

Cross-replica reduction (hierarchical): after each replica has reduced its gradients internally (costed by the
replica's own estimate), every GPU of replica r owns a 1/n_r share of the model's gradients (n_r GPUs in it). The
shares are all-reduced across the R replicas in min_r n_r rings in parallel, each ring moving
total_params * grad_bytes / min_r n_r bytes over one GPU's NIC per replica (comm.Group(R, 1, R)); the ring runs at
the pace of its slowest hop, so the time is the largest comm.collective_time over the pairs of replicas, each on
the link between their groups (estimate.link_between; two pieces of one group talk over its inter_node link).
Assumed: the all-gather that gives the reduced shares back inside a replica is not counted (with ZeRO/distributed
optimizer it is the parameter all-gather the replica's estimate already has); the optimizer step is not moved
after the cross reduction (the sum is the same).

Split (best_shares): T_r(k) is non-decreasing in k (more micro-batches through the same pipeline; memory in flight
only grows; an interleaved replica takes its micro-batches in whole groups of pp, Megatron's rule), so whether max_r T_r(k_r) <= tau is reachable is a bounded coin problem: each replica takes 1..K_r(tau)
micro-batches (K_r by bisection on k), and a subset-sum over the replicas says whether the shares can sum to the
global batch. The smallest such tau is one of the T_r(k) values; it is found by bisection on tau that stops when
no T_r(k) lies strictly between the largest infeasible and the smallest feasible tau. Among the splits reaching
it, the one with the smallest largest share, then the lexicographically smallest shares, wins (for two replicas:
the most even, then the fewer for the first). Tests compare it with brute force.

The search over replica plans is in replica_search.py.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

from paraplan.cost import comm, compute
from paraplan.errors import ParaplanError
from paraplan.frameworks import grad_reduce_bytes_per_param
from paraplan.hetero.estimate import HeteroContext, estimate_hetero, link_between
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec
from paraplan.specs.cluster import NodeGroup


@dataclass(frozen=True)
class ReplicaPlan:
    replicas: tuple[HeteroPlan, ...]      # stages' groups index the (cut) cluster; groups disjoint across replicas
    microbatches: tuple[int, ...]         # k_r: micro-batches of replica r per iteration
    cuts: tuple[int, ...] | None = None   # per node group of the cluster: pieces it is cut into (None: uncut)

    def __post_init__(self):
        object.__setattr__(self, "replicas", tuple(self.replicas))
        object.__setattr__(self, "microbatches", tuple(self.microbatches))
        if self.cuts is not None:
            object.__setattr__(self, "cuts", tuple(self.cuts))
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
                                        f"disjoint node groups (cut a group to share it)")
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

    def group_label(self, group: int) -> str:
        """A group of the cut cluster as the cluster file knows it: "g1", or "g0 part 2/2" for a piece."""
        if not self.cuts:
            return f"g{group}"
        for g, c in enumerate(self.cuts):
            if group < c:
                return f"g{g}" if c == 1 else f"g{g} part {group + 1}/{c}"
            group -= c
        return f"g?{group}"

    def summary(self) -> str:
        return " || ".join(f"replica {r} on {'+'.join(self.group_label(g) for g in self.groups(r))} [{s} seq]: "
                           f"{p.summary()}" for r, (p, s) in enumerate(zip(self.replicas, self.shares)))


def regroup(cluster: ClusterSpec, parts) -> ClusterSpec:
    """A cluster of node groups `parts`, each (group of `cluster`, its first node used, number of nodes): a subset
    of the groups, or groups cut into pieces of whole nodes. group_links entries go to every pair of parts of the
    linked groups (two parts of one group talk over its inter_node link, link_between's default); node_links
    entries follow their nodes to their new numbers, and are dropped where a node is left out."""
    parts = tuple(parts)
    groups = []
    for g, _, nodes in parts:
        ng = cluster.node_groups[g]
        groups.append(NodeGroup(ng.gpu, nodes, ng.gpus_per_node, ng.intra_node, ng.inter_node))
    links = tuple(((a, b), link) for (ga, gb), link in cluster.extra.get("group_links", ())
                  for a, (pa, _, _) in enumerate(parts) for b, (pb, _, _) in enumerate(parts)
                  if a < b and {pa, pb} == {ga, gb} and pa != pb)
    extra = dict(cluster.extra, group_links=links)
    if "node_links" in cluster.extra:
        old = list(itertools.accumulate((g.num_nodes for g in cluster.node_groups), initial=0))
        new = list(itertools.accumulate((n for _, _, n in parts), initial=0))
        where = {old[g] + first + j: new[d] + j for d, (g, first, n) in enumerate(parts) for j in range(n)}
        extra["node_links"] = tuple(dataclasses.replace(nl, nodes=tuple(where[x] for x in nl.nodes))
                                    for nl in cluster.extra["node_links"] if all(x in where for x in nl.nodes))
    whole = all(first == 0 and n == cluster.node_groups[g].num_nodes for g, first, n in parts)
    label = [g for g, _, _ in parts] if whole else [f"{g}:{first}+{n}n" for g, first, n in parts]
    return ClusterSpec(f"{cluster.name}{label}", tuple(groups), cluster.source, extra)


def sub_cluster(cluster: ClusterSpec, groups: tuple[int, ...]) -> ClusterSpec:
    """The node groups `groups` of `cluster` alone (renumbered 0..), with their group_links."""
    return regroup(cluster, [(g, 0, cluster.node_groups[g].num_nodes) for g in groups])


def cut_cluster(cluster: ClusterSpec, cuts: tuple[int, ...] | None) -> ClusterSpec:
    """`cluster` with node group g cut into cuts[g] groups of equal whole nodes (in order: g0's pieces, g1's...)."""
    if cuts is None:
        return cluster
    if len(cuts) != len(cluster.node_groups):
        raise ParaplanError(f"cuts {tuple(cuts)} must have one entry per node group ({len(cluster.node_groups)})")
    for g, c in enumerate(cuts):
        nodes = cluster.node_groups[g].num_nodes
        if not isinstance(c, int) or c < 1 or nodes % c:
            raise ParaplanError(f"node group {g} has {nodes} nodes: it cannot be cut into {c!r} pieces of whole "
                                f"nodes (allowed: the divisors of {nodes})")
    if all(c == 1 for c in cuts):
        return cluster
    return regroup(cluster, [(g, i * cluster.node_groups[g].num_nodes // c, cluster.node_groups[g].num_nodes // c)
                             for g, c in enumerate(cuts) for i in range(c)])


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


def cross_reduce_time(ctx: HeteroContext, plan: ReplicaPlan | tuple[HeteroPlan, ...]) -> float:
    """Seconds of the cross-replica gradient all-reduce of a plan's replicas (module docstring); it does not depend
    on the batch split."""
    plans = plan.replicas if isinstance(plan, ReplicaPlan) else tuple(plan)
    n_min = min(p.num_gpus for p in plans)
    nbytes = ctx.model.total_params() * grad_reduce_bytes_per_param(ctx.job.framework) / n_min
    groups = [tuple(sorted({s.group for s in p.stages})) for p in plans]
    return cross_group_collective_time(ctx, "all_reduce", nbytes, groups)


def replica_job(job: JobSpec, share: int) -> JobSpec:
    return JobSpec(share, job.seq_len, job.precision, job.framework, job.memory_headroom)


def replica_time(ctx: HeteroContext, plan: HeteroPlan, k: int, cache: dict | None = None) -> HeteroEstimate:
    """The replica's estimate with k micro-batches (its batch share k * mb)."""
    key = (plan, k)
    if cache is not None and key in cache:
        return cache[key]
    job = replica_job(ctx.job, k * plan.microbatch_sequences)
    sub = HeteroContext(ctx.model, ctx.cluster, job, ctx.cals)
    sub.caches = ctx.caches                       # layer costs do not depend on the batch share
    est = estimate_hetero(ctx.model, ctx.cluster, job, plan, sub)
    if cache is not None:
        cache[key] = est
    return est


def context_for(ctx: HeteroContext, cluster: ClusterSpec, cuts) -> HeteroContext:
    """`ctx` when it is on the cut cluster already, else a context on it."""
    cut = cut_cluster(cluster, cuts)
    if ctx.cluster == cut:
        return ctx
    origin = [g for g, c in enumerate(cuts or [1] * len(cluster.node_groups)) for _ in range(c)]
    cals = {d: ctx.cals[g] for d, g in enumerate(origin)} if ctx.cluster == cluster else None
    return HeteroContext(ctx.model, cut, ctx.job, cals)


def _estimate(ctx: HeteroContext, plan: ReplicaPlan, cache: dict | None) -> ReplicaEstimate:
    """estimate_replicas with `ctx` on the plan's cut cluster."""
    model, job = ctx.model, ctx.job
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


def estimate_replicas(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: ReplicaPlan,
                      ctx: HeteroContext | None = None, cache: dict | None = None) -> ReplicaEstimate:
    """Iteration time, throughput and per-replica memory of `plan` on `cluster` (cut as plan.cuts says). Raises
    ParaplanError when it is invalid."""
    ctx = context_for(ctx or HeteroContext(model, cluster, job), cluster, plan.cuts)
    return _estimate(ctx, plan, cache)


# ---- the best split of the batch among the replicas -------------------------------------------------------------
def _reach(caps, mbs, total: int) -> list[int]:
    """Bitsets: bit s of reach[r] says replicas r.. can take s sequences with 1 <= k_j <= caps[j] each."""
    mask = (1 << (total + 1)) - 1
    reach = [0] * len(caps) + [1]
    for r in range(len(caps) - 1, -1, -1):
        acc = 0
        for k in range(1, caps[r] + 1):
            acc |= reach[r + 1] << (k * mbs[r])
        reach[r] = acc & mask
    return reach


def _smallest_shares(caps, mbs, total: int) -> tuple[int, ...] | None:
    """Among k vectors with 1 <= k_r <= caps[r] and sum k_r mbs[r] = total: the one with the smallest largest share,
    then the lexicographically smallest; None if there is none."""
    def pick(limit):
        c = [min(cap, limit // mb) for cap, mb in zip(caps, mbs)]
        if min(c) < 1:
            return None
        reach = _reach(c, mbs, total)
        if not reach[0] >> total & 1:
            return None
        out, rest = [], total
        for r, mb in enumerate(mbs):
            k = next(k for k in range(1, c[r] + 1) if rest >= k * mb and reach[r + 1] >> (rest - k * mb) & 1)
            out.append(k)
            rest -= k * mb
        return tuple(out)

    if pick(total) is None:
        return None
    lo, hi = -(-total // len(mbs)) - 1, total          # pick(lo) fails: some share is above the mean
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pick(mid) is None:
            lo = mid
        else:
            hi = mid
    return pick(hi)


def best_shares(time_of, mbs, total: int) -> tuple[int, ...] | None:
    """Micro-batches k_r per replica minimising max_r time_of(r, k_r) (inf: does not fit) subject to
    sum k_r mbs[r] = total, k_r >= 1, for time_of non-decreasing in k; ties as _smallest_shares. None if no
    split fits. See the module docstring."""
    R = len(mbs)
    kmax = [(total - (sum(mbs) - mb)) // mb for mb in mbs]
    if min(kmax) < 1:
        return None

    def cap(r: int, tau: float) -> int:
        lo, hi = 0, kmax[r]                  # largest k with time <= tau that fits (0: none)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if time_of(r, mid) <= tau and time_of(r, mid) < math.inf:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def split_at(tau: float):
        return _smallest_shares([cap(r, tau) for r in range(R)], mbs, total)

    def worst(ks) -> float:
        return max(time_of(r, k) for r, k in enumerate(ks))

    lo = max(time_of(r, 1) for r in range(R))      # no split is faster than every replica's first micro-batch
    if lo == math.inf:
        return None
    ks = split_at(lo)
    if ks is not None:
        return ks
    ks = split_at(math.inf)
    if ks is None:
        return None
    hi = worst(ks)                                  # feasible; lo is not
    while True:
        nxt = min((time_of(r, c + 1) for r in range(R) if (c := cap(r, lo)) < kmax[r]), default=math.inf)
        if nxt >= hi:                               # no T_r(k) strictly between: hi is the optimum
            return split_at(hi)
        mid = (lo + hi) / 2
        tau = mid if nxt <= mid < hi and mid > lo else nxt
        ks = split_at(tau)
        if ks is None:
            lo = tau
        else:
            hi = worst(ks)


def _all_splits(mbs, total: int):
    """Every k vector with k_r >= 1 and sum k_r mbs[r] = total (brute force)."""
    if len(mbs) == 1:
        if total > 0 and total % mbs[0] == 0:
            yield (total // mbs[0],)
        return
    for k in range(1, (total - sum(mbs[1:])) // mbs[0] + 1):
        for rest in _all_splits(mbs[1:], total - k * mbs[0]):
            yield (k,) + rest


def microbatch_step(plan: HeteroPlan) -> int:
    """A replica's micro-batches come in multiples of this: pp when interleaved, else 1."""
    return plan.pp if plan.vpp > 1 else 1


def best_split(ctx: HeteroContext, plans, exhaustive: bool = False, cache: dict | None = None,
               cuts: tuple[int, ...] | None = None) -> ReplicaEstimate | None:
    """The split of the global batch among replicas `plans` (on ctx's cluster, cut as `cuts` says) with the smallest
    iteration time among those that fit in memory (ties: the smallest largest share, then the lexicographically
    smallest shares), or None. best_shares; `exhaustive` evaluates every split."""
    cache = {} if cache is None else cache
    plans = tuple(plans)
    # an interleaved replica runs its micro-batches in groups of pp (Megatron schedules.py): it takes whole groups,
    # and its time is non-decreasing in the number of groups
    steps = [microbatch_step(p) for p in plans]
    units = [p.microbatch_sequences * step for p, step in zip(plans, steps)]
    G = ctx.job.global_batch

    def time_of(r: int, j: int) -> float:
        try:
            e = replica_time(ctx, plans[r], j * steps[r], cache)
        except ParaplanError:
            return math.inf
        return e.iteration_time_s if e.fits else math.inf

    if exhaustive:
        rank = {js: (max(time_of(r, j) for r, j in enumerate(js)), max(j * u for j, u in zip(js, units)), js)
                for js in _all_splits(units, G)}
        js = min(rank, key=rank.get, default=None)
        if js is None or rank[js][0] == math.inf:
            return None
    else:
        js = best_shares(time_of, units, G)
        if js is None:
            return None
    return _estimate(ctx, ReplicaPlan(plans, tuple(j * step for j, step in zip(js, steps)), cuts), cache)
