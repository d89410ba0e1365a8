"""Search over data-parallel replica plans (replicas.py): R >= 2 whole pipelines with uneven batch shares.

Layouts: each node group is either kept whole or cut into c equal pieces of whole nodes (2 <= c <= max_replicas,
c dividing its node count), each piece a replica of its own; the whole groups are divided among the other replicas
in every way (set partitions). So for A100 + V100 with max_replicas = 3: {A100} {V100}, {A100 half} {A100 half}
{V100}, {A100} {V100 half} {V100 half}, ... A piece is never pipelined together with another group.

Per layout: each replica's plans are the `per_side` best of its own exact heterogeneous search (search.py) at the
power-of-two-rounded batch shares nearest to its share of the layout's peak compute (nominal_shares); every
combination of those plans gets its exact best split (replicas.best_shares; identical replicas are combined once),
unless a lower bound (its cross-replica reduction + the slowest replica's time with one micro-batch) already
exceeds the top_k-th best time found.

What is exact and what is not: the split of the batch is exact for the plans chosen, and the combination pruning
loses nothing, but the family is restricted: a replica plan outside its search's top `per_side` at those shares is
never tried (a plan ranked lower at the nominal share can be better at the share the split finally gives it).
`exhaustive=True` runs the replicas' searches without pruning and tries every split of every combination: the
same family, checked to give the same answer.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass

from paraplan.errors import ParaplanError
from paraplan.hetero.estimate import HeteroContext
from paraplan.hetero.plan import HeteroPlan
from paraplan.hetero.replicas import (ReplicaEstimate, best_split, context_for, cross_reduce_time,
                                      microbatch_step, regroup, replica_job, replica_time)
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec

FAMILY = ("replica plans of 2-{max_replicas} replicas on whole or cut node groups: the top {per_side} of each "
          "replica's exact search at its nominal batch shares, with the exact batch split (not every replica plan)")


@dataclass(frozen=True)
class Layout:
    cuts: tuple[int, ...]                       # per node group: pieces (1: whole)
    replicas: tuple[tuple[int, ...], ...]       # per replica: its groups in the cut cluster

    def parts(self, cluster: ClusterSpec, r: int) -> tuple[tuple[int, int, int], ...]:
        """(group of `cluster`, first node, nodes) of each group of replica r: what its search runs on. Pieces of
        one group are alike unless node_links single some of their nodes out: then the first node tells them
        apart (and they are searched separately)."""
        out = []
        for d in self.replicas[r]:
            g = next(g for g in range(len(self.cuts)) if d < sum(self.cuts[:g + 1]))
            n = cluster.node_groups[g].num_nodes // self.cuts[g]
            first = (d - sum(self.cuts[:g])) * n if cluster.extra.get("node_links") else 0
            out.append((g, first, n))
        return tuple(out)


def set_partitions(items: tuple):
    """Every division of `items` into non-empty unordered blocks (each once; blocks in order of their first item)."""
    if not items:
        yield ()
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + ((first,) + part[i],) + part[i + 1:]
        yield ((first,),) + part


def layouts(cluster: ClusterSpec, max_replicas: int = 3, cut: bool = True) -> list[Layout]:
    """Every layout of 2..max_replicas replicas (module docstring)."""
    options = [[1] + ([c for c in range(2, max_replicas + 1) if g.num_nodes % c == 0] if cut else [])
               for g in cluster.node_groups]
    out = []
    for cuts in itertools.product(*options):
        base = [sum(cuts[:g]) for g in range(len(cuts))]
        pieces = tuple((base[g] + i,) for g, c in enumerate(cuts) if c > 1 for i in range(c))
        whole = tuple(base[g] for g, c in enumerate(cuts) if c == 1)
        for blocks in set_partitions(whole):
            if 2 <= len(blocks) + len(pieces) <= max_replicas:
                out.append(Layout(tuple(cuts), tuple(sorted(blocks)) + pieces))
    return out


def nominal_shares(global_batch: int, fraction: float) -> list[int]:
    """Batch shares at which a replica's plans are searched: the multiples of a power-of-two unit (the largest
    leaving at least 8 units, so that wide data parallelism stays possible) just below and above `fraction` of the
    batch, within (0, global_batch); for a replica below one unit also the power of two just below its share."""
    unit = 1
    while global_batch % (2 * unit) == 0 and global_batch // (2 * unit) >= 8:
        unit *= 2
    x = fraction * global_batch / unit
    out = []
    for k in (int(x), int(x) + 1):
        share = min(max(k, 1) * unit, global_batch - unit)
        if 0 < share < global_batch and share not in out:
            out.append(share)
    if x < 1:               # a small replica: also the power of two just below its share (finer than the unit)
        share = 2 ** max(0, math.floor(math.log2(max(fraction * global_batch, 1))))
        if share < unit and global_batch % share == 0 and share not in out:
            out.insert(0, share)
    return out


def _relabel(plan: HeteroPlan, groups: tuple[int, ...]) -> HeteroPlan:
    return dataclasses.replace(plan, stages=tuple(dataclasses.replace(s, group=groups[s.group]) for s in plan.stages))


def _combinations(kinds, plans):
    """Plan choices per replica; replicas of one kind (identical pieces) take their plans as a multiset."""
    runs = [list(g) for _, g in itertools.groupby(range(len(kinds)), key=lambda r: kinds[r])]
    per_run = [itertools.combinations_with_replacement(plans[run[0]], len(run)) for run in runs]
    for choice in itertools.product(*per_run):
        yield tuple(p for run_choice in choice for p in run_choice)


def _lower_bound(ctx: HeteroContext, plans, cache: dict) -> float:
    """At most the iteration time of any split of `plans`: every replica runs at least one micro-batch (one group
    of pp when interleaved), and the cross-replica reduction does not depend on the split."""
    first = []
    for p in plans:
        try:
            first.append(replica_time(ctx, p, microbatch_step(p), cache).iteration_time_s)
        except ParaplanError:
            return float("inf")
    return max(first) + cross_reduce_time(ctx, plans)


@dataclass
class ReplicaSearchResult:
    plans: list[ReplicaEstimate]          # best first
    pairs: int                            # replica combinations whose split was optimised
    seconds: float
    exhaustive: bool
    layouts: int = 0
    bounded: int = 0                      # combinations skipped by their lower bound
    family: str = ""

    @property
    def best(self) -> ReplicaEstimate | None:
        return self.plans[0] if self.plans else None

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict() if self.best else None, "pairs": self.pairs, "layouts": self.layouts,
                "bounded": self.bounded, "seconds": self.seconds, "exhaustive": self.exhaustive,
                "family": self.family}


def search_replicas(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, options=None, top_k: int = 1,
                    per_side: int = 3, exhaustive: bool = False, executor: str = "serial",
                    workers: int | None = None, ctx: HeteroContext | None = None, max_replicas: int = 3,
                    cut_groups: bool = True) -> ReplicaSearchResult:
    """The `top_k` best replica plans of 2..max_replicas replicas (module docstring: the family is restricted to
    each replica's top `per_side` plans). `cut_groups`: let replicas share a node group cut into pieces."""
    from paraplan.hetero.search import search_hetero
    if max_replicas < 2 or per_side < 1 or top_k < 1:
        raise ParaplanError(f"max_replicas must be >= 2, per_side and top_k >= 1; got {max_replicas}, {per_side}, "
                            f"{top_k}")
    start = time.perf_counter()
    ctx = ctx or HeteroContext(model, cluster, job)
    G = job.global_batch
    searched: dict = {}                   # (parts, share) -> plans on the parts' own cluster

    def plans_of(parts, share):
        if (parts, share) not in searched:
            try:
                r = search_hetero(model, regroup(cluster, parts), replica_job(job, share), options, per_side,
                                  exhaustive, executor, workers)
                searched[parts, share] = [e.plan for e in r.plans]
            except ParaplanError:
                searched[parts, share] = []
        return searched[parts, share]

    found: list[ReplicaEstimate] = []
    pairs = bounded = 0
    all_layouts = layouts(cluster, max_replicas, cut_groups)
    for layout in all_layouts:
        cctx = context_for(ctx, cluster, None if all(c == 1 for c in layout.cuts) else layout.cuts)
        cuts = None if cctx is ctx else layout.cuts
        cache: dict = {}
        kinds = [layout.parts(cluster, r) for r in range(len(layout.replicas))]
        power = [sum(cluster.node_groups[g].gpu.peak(job.precision) * n * cluster.node_groups[g].gpus_per_node
                     for g, _, n in parts) for parts in kinds]
        candidates = []
        for parts, pw in zip(kinds, power):
            local = []
            for share in nominal_shares(G, pw / sum(power)):
                local += [p for p in plans_of(parts, share) if p not in local]
            candidates.append(local)
        for choice in _combinations(kinds, candidates):
            plans = tuple(_relabel(p, groups) for p, groups in zip(choice, layout.replicas))
            limit = found[top_k - 1].iteration_time_s if len(found) >= top_k else float("inf")
            if not exhaustive and _lower_bound(cctx, plans, cache) > limit:
                bounded += 1
                continue
            pairs += 1
            e = best_split(cctx, plans, exhaustive, cache, cuts)
            if e is not None:
                found.append(e)
                found.sort(key=lambda x: (x.iteration_time_s, x.plan.summary()))
    return ReplicaSearchResult(found[:top_k], pairs, time.perf_counter() - start, exhaustive, len(all_layouts),
                               bounded, FAMILY.format(per_side=per_side, max_replicas=max_replicas))
