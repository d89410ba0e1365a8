"""The heterogeneous planner's answer and the baselines it is judged against, in one run.

- homogeneous_subset: the exact homogeneous search (paraplan.search) on each node group alone; the fastest wins.
- uniform_split: the usual practice on a mixed cluster: one Megatron grid over every group (the same tp and dp
  everywhere), layers split evenly, batch split evenly; ZeRO and recompute free, no interleaving or CP.
- metis_like: stages ordered by device type (fastest first), layers in proportion to each stage's peak compute,
  no ZeRO and no recompute, tp/dp per stage, every group used (after Metis, USENIX ATC'24).
The heterogeneous search covers both of the last two spaces, so it is never slower than either. A second plan
family is searched beside it (replica_search.py): 2-3 data-parallel replicas, whole pipelines on disjoint node
groups or on pieces of a cut group, with uneven batch shares. The recommended plan is the fastest of the heterogeneous pipeline, the replica plan and
the homogeneous-subset plan.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from paraplan.hetero.estimate import HeteroContext
from paraplan.hetero.replica_search import ReplicaSearchResult, search_replicas
from paraplan.hetero.search import HeteroSearchResult, search_hetero
from paraplan.hetero.space import SpaceOptions
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec

# the baselines keep to what they are described as: DP/PP/TP grids, no interleaving or context parallelism
UNIFORM = SpaceOptions(splits=("even",), same_shape=True, all_groups=True, cp=(1,), vpp=(1,))
METIS_LIKE = SpaceOptions(splits=("power",), zero=(0,), recompute=("none",), orders="by_speed", all_groups=True,
                          cp=(1,), vpp=(1,))


@dataclass
class Baseline:
    name: str
    tokens_per_s: float | None        # None: no plan of that kind fits
    description: str
    seconds: float

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class HeteroPlanResult:
    search: HeteroSearchResult
    baselines: dict[str, Baseline]
    recommended: str                  # "heterogeneous", "replicas", "homogeneous_subset" or "none" (nothing fits)
    serial_search_s: float | None = None
    extra: dict = field(default_factory=dict)
    replicas: ReplicaSearchResult | None = None

    @property
    def best_tokens_per_s(self) -> float | None:
        h = self.search.best.tokens_per_s if self.search.best else None
        rep = self.replicas.best.tokens_per_s if self.replicas and self.replicas.best else None
        sub = self.baselines["homogeneous_subset"].tokens_per_s if "homogeneous_subset" in self.baselines else None
        return max((x for x in (h, rep, sub) if x), default=None)

    def ratios(self) -> dict[str, float | None]:
        """Throughput of the heterogeneous planner's best plan over each baseline's."""
        best = self.best_tokens_per_s
        return {k: (best / b.tokens_per_s if best and b.tokens_per_s else None) for k, b in self.baselines.items()}

    def to_dict(self) -> dict:
        best = self.search.best
        return {"recommended": self.recommended, "tokens_per_s": self.best_tokens_per_s,
                "heterogeneous": best.to_dict() if best else None,
                "others": [p.to_dict() for p in self.search.plans[1:]],
                "baselines": {k: b.to_dict() for k, b in self.baselines.items()},
                "replicas": self.replicas.to_dict() if self.replicas else None,
                "throughput_ratio": self.ratios(), "search": self.search.stats.to_dict(),
                "serial_search_s": self.serial_search_s}


def homogeneous_subset(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, executor: str = "process",
                       workers: int | None = None) -> Baseline:
    """The best plan of the exact homogeneous search on any single node group."""
    from paraplan.search import search
    start = time.perf_counter()
    best, text = None, "no node group alone fits the model"
    for i, g in enumerate(cluster.node_groups):
        sub = ClusterSpec(f"{cluster.name}[{i}]", (g,), cluster.source)
        try:
            r = search(model, sub, job, top_k=1, executor=executor, workers=workers)
        except Exception as exc:  # noqa: BLE001 - a group the homogeneous search rejects is simply not a candidate
            del exc
            continue
        if r.plans and (best is None or r.best.tokens_per_s > best):
            best = r.best.tokens_per_s
            text = f"group {i} ({g.num_gpus} x {g.gpu.name}): {r.best.strategy.describe()}"
    return Baseline("homogeneous_subset", best, text, time.perf_counter() - start)


def _from_search(name: str, r: HeteroSearchResult) -> Baseline:
    b = r.best
    return Baseline(name, b.tokens_per_s if b else None, b.plan.summary() if b else "no plan fits",
                    r.stats.seconds)


def plan_hetero(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, options: SpaceOptions | None = None,
                top_k: int = 3, executor: str = "process", workers: int | None = None,
                baselines: bool = True, serial_timing: bool = False, exhaustive: bool = False,
                replicas: bool = True, max_replicas: int = 3) -> HeteroPlanResult:
    """Search the heterogeneous plans (and, with `replicas`, the plans of 2..max_replicas data-parallel replicas)
    and run the baselines.
    `serial_timing`: also time the search on one process (the parallel speed-up is search_s vs serial_search_s)."""
    ctx = HeteroContext(model, cluster, job)
    result = search_hetero(model, cluster, job, options, top_k, exhaustive, executor, workers, ctx=ctx)
    serial_s = None
    if serial_timing:
        serial_s = search_hetero(model, cluster, job, options, top_k, exhaustive, "serial").stats.seconds
    found = {}
    if baselines:
        found["homogeneous_subset"] = homogeneous_subset(model, cluster, job, executor, workers)
        found["uniform_split"] = _from_search("uniform_split", search_hetero(model, cluster, job, UNIFORM, 1,
                                                                             executor="serial", ctx=ctx))
        found["metis_like"] = _from_search("metis_like", search_hetero(model, cluster, job, METIS_LIKE, 1,
                                                                       executor="serial", ctx=ctx))
    rep = None
    if replicas and len(cluster.node_groups) > 1:
        rep = search_replicas(model, cluster, job, options, 1, exhaustive=exhaustive, executor=executor,
                              workers=workers, ctx=ctx, max_replicas=max_replicas)
    sub = found.get("homogeneous_subset")
    # the fastest family wins; ties go to the one pipeline, then the homogeneous subset
    offers = [("heterogeneous", result.best.tokens_per_s if result.best else None),
              ("homogeneous_subset", sub.tokens_per_s if sub else None),
              ("replicas", rep.best.tokens_per_s if rep and rep.best else None)]
    offers = [(name, t) for name, t in offers if t]
    recommended = max(offers, key=lambda o: o[1])[0] if offers else "none"
    return HeteroPlanResult(result, found, recommended, serial_s, replicas=rep)
