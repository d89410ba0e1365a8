"""Branch and bound over the strategy space: the fastest plans that fit, found without simulating almost any.

1. build the space and drop what the engines' rules forbid (search/space.py);
2. bound every candidate's memory and iteration time from below at once (search/bounds.py);
3. drop candidates whose memory bound exceeds the GPU;
4. simulate the rest in increasing order of their time bound, stopping at the first whose bound is above the K-th
   best plan found so far: everything after it is slower still. The result equals simulating every candidate
   (`exhaustive=True` does exactly that, and the tests compare both on random cases).
Ranking: iteration time, ties by the candidate's position in the space, so results never depend on the executor.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from paraplan.cost import memory
from paraplan.cost.calibration import Calibration, calibration_for
from paraplan.errors import ParaplanError
from paraplan.estimate import MAX_MICROBATCHES
from paraplan.search.bounds import Bounds
from paraplan.search.executors import OUT_OF_MEMORY, STAGE_BOUND, make_executor
from paraplan.search.space import build_space
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Plan


@dataclass
class SearchStats:
    space_size: int                    # every combination generated
    valid: int                         # left after the engines' validity rules
    pruned: dict[str, int]             # candidates removed, by rule or bound (each counted once, first reason)
    simulated: int                     # full estimates run
    seconds: float
    executor: str
    workers: int
    exhaustive: bool

    @property
    def pruned_fraction(self) -> float:
        """Share of the space never given to the full simulator."""
        return 1 - self.simulated / self.space_size if self.space_size else 0.0

    def to_dict(self) -> dict:
        return {"space_size": self.space_size, "valid": self.valid, "pruned": dict(self.pruned),
                "simulated": self.simulated, "pruned_fraction": self.pruned_fraction, "seconds": self.seconds,
                "executor": self.executor, "workers": self.workers, "exhaustive": self.exhaustive}


@dataclass
class SearchResult:
    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    plans: list[Plan]                  # best first
    stats: SearchStats
    nothing_fits: str | None = None    # why no plan fits, with what would make one fit
    calibration: Calibration | None = None   # the constants the plans were costed with

    @property
    def best(self) -> Plan:
        if not self.plans:
            raise ParaplanError(self.nothing_fits or "no plan found")
        return self.plans[0]

    def to_dict(self) -> dict:
        best = self.plans[0] if self.plans else None
        return {"model": self.model.name, "cluster": {"name": self.cluster.name, "gpus": self.cluster.num_gpus,
                                                       "gpu": self.cluster.gpu.name},
                "job": {"global_batch": self.job.global_batch, "seq_len": self.job.seq_len,
                        "precision": self.job.precision, "framework": self.job.framework},
                "best": best.to_dict() if best else None,
                "top": [dict(p.to_dict(), rank=i + 1, strategy_text=p.strategy.describe(),
                             versus_best=compare(p, best) if i else "best") for i, p in enumerate(self.plans)],
                "stats": self.stats.to_dict(), "nothing_fits": self.nothing_fits}


def search(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, allowed: dict[str, tuple] | None = None,
           top_k: int = 5, exhaustive: bool = False, executor: str = "process", workers: int | None = None,
           address: str | None = None, calibration: Calibration | None = None, progress=None) -> SearchResult:
    """The `top_k` fastest strategies that fit in memory. `progress(done, bound)` is called as candidates are
    simulated (bound: how many could still be)."""
    if top_k < 1:
        raise ParaplanError(f"top_k must be at least 1, got {top_k}")
    start = time.perf_counter()
    cal = calibration or calibration_for(cluster.gpu.name, job.framework)
    space = build_space(model, cluster, job, allowed, MAX_MICROBATCHES)
    cand = space.candidates
    n = len(cand)
    pruned = {f"rule:{k}": v for k, v in space.invalid_by_rule.items() if v}
    bounds = Bounds(model, cluster, job, cal, cand)
    if exhaustive:
        todo = np.arange(n)
    else:
        fits = bounds.memory_gib <= bounds.capacity_gib * (1 + 1e-9) if n else np.zeros(0, bool)
        pruned["memory_bound"] = int((~fits).sum())
        todo = np.flatnonzero(fits)
        todo = todo[np.lexsort((todo, bounds.time_s[todo]))]     # by time bound, ties by position
    pool = make_executor(executor, model, cluster, job, cal, workers, address, bounds.cache)
    best: list[tuple[float, int, int]] = []       # max-heap of the top_k: (-time, -index, slot)
    plans: dict[int, Plan] = {}
    simulated = out_of_memory = stage_bound = 0
    batch_size = 1 if pool.workers == 1 else 8 * pool.workers
    pos = 0
    try:
        while pos < len(todo):
            threshold = -best[0][0] if len(best) == top_k else np.inf
            if not exhaustive and bounds.time_s[todo[pos]] > threshold:
                break
            batch = todo[pos:pos + batch_size]
            if not exhaustive:
                batch = batch[bounds.time_s[batch] <= threshold]
            pos += batch_size
            results = pool.map([cand.strategy(int(i), job.framework, job.precision) for i in batch],
                               np.inf if exhaustive else threshold, skip_unfit=not exhaustive)
            for i, plan in zip(batch, results):
                if plan == STAGE_BOUND:                  # its exact stage costs bound it above the threshold
                    stage_bound += 1
                    continue
                if plan == OUT_OF_MEMORY:                # its exact memory, known before simulating, is too much
                    out_of_memory += 1
                    continue
                simulated += 1
                if not plan.memory.fits:
                    out_of_memory += 1
                    continue
                entry = (-plan.iteration_time_s, -int(i), int(i))
                if len(best) < top_k:
                    heapq.heappush(best, entry)
                    plans[int(i)] = plan
                elif entry > best[0]:
                    dropped = heapq.heapreplace(best, entry)
                    plans.pop(dropped[2], None)
                    plans[int(i)] = plan
            if progress:
                progress(min(pos, len(todo)), len(todo))
    finally:
        pool.close()
    if not exhaustive:
        pruned["time_bound"] = int(len(todo) - simulated - stage_bound - out_of_memory)
        pruned["stage_cost_bound"] = stage_bound
    pruned["out_of_memory"] = out_of_memory
    ranked = sorted(best, key=lambda e: (-e[0], -e[1]))
    stats = SearchStats(space.size, n, {k: v for k, v in pruned.items() if v}, simulated,
                        time.perf_counter() - start, pool.name, pool.workers, exhaustive)
    result = SearchResult(model, cluster, job, [plans[e[2]] for e in ranked], stats,
                          calibration=cal)
    if not ranked:
        result.nothing_fits = _nothing_fits(model, cluster, job, cand, bounds, allowed or {})
    return result


def compare(plan: Plan, best: Plan) -> str:
    """Why `plan` loses to `best`: the time difference and the parts of the breakdown that differ most."""
    if plan is best:
        return "best"
    delta = plan.iteration_time_s - best.iteration_time_s
    a, b = _parts(plan), _parts(best)
    diffs = sorted(((a.get(k, 0.0) - b.get(k, 0.0), k) for k in set(a) | set(b)), key=lambda d: -abs(d[0]))
    top = ", ".join(f"{k} {d:+.3f} s" for d, k in diffs[:3] if abs(d) > 1e-4 * max(best.iteration_time_s, 1e-9))
    pct = 100 * delta / best.iteration_time_s if best.iteration_time_s else 0.0
    return f"{delta:+.3f} s ({pct:+.1f}%)" + (f": {top}" if top else "")


def _parts(plan: Plan) -> dict[str, float]:
    t = plan.time
    parts = {"compute": t.compute_s - t.recompute_s, "recompute": t.recompute_s, "bubble": t.bubble_s,
             "optimizer": t.optimizer_s, "overhead": t.overhead_s, "overlap slowdown": t.overlap_slowdown_s}
    parts.update({f"{k} comm": v for k, v in t.exposed_comm_s.items()})
    return parts


def _nothing_fits(model, cluster, job, cand, bounds, allowed) -> str:
    """One line: the smallest memory shortfall found and what would make a plan fit."""
    cap = bounds.capacity_gib
    if len(cand) == 0:
        return ("no strategy in the space is valid for this model, cluster and batch"
                + (f" under the constraints {_constraints(allowed)}" if allowed else "")
                + "; relax --fix/--allow, or change --global-batch or the GPU count")
    # exact memory (closed-form in-flight micro-batches) of the candidates with the smallest bounds
    closest = np.argsort(bounds.memory_gib, kind="stable")[:64]
    need = min(memory.memory_per_gpu(model, job, cand.strategy(int(i), job.framework, job.precision),
                                     cluster.gpu).total_gib for i in closest)
    need = max(need, float(bounds.memory_gib.min()))
    hints = []
    if "recompute" in allowed and "full" not in allowed["recompute"]:
        hints.append("allow recompute=full")
    if "zero" in allowed and 3 not in allowed["zero"]:
        hints.append("allow zero=3")
    restricted = [k for k in allowed if k not in ("recompute", "zero")]
    if restricted:
        hints.append(f"relax --fix/--allow on {', '.join(restricted)}")
    gpus = cluster.num_gpus * 2 ** max(1, int(np.ceil(np.log2(need / cap))))
    hints += [f"more GPUs (try {gpus})", f"a shorter sequence than {job.seq_len}",
              "a GPU with more memory"]
    return (f"no plan fits in memory: the leanest needs {need:.1f} GiB per GPU, {need - cap:.1f} GiB more than "
            f"the {cap:.1f} GiB usable on {cluster.gpu.name}; try: {'; '.join(hints)}")


def _constraints(allowed) -> str:
    return " ".join(f"{k}={','.join(str(v).lower() for v in vals)}" for k, vals in allowed.items())
