"""One training step of variable-length sequences: blast the batch into micro-batches, plan each one's groups
(fast planner or MILP), place the groups on ranks, and predict the step time (FlexSP Alg. 1).

step time = sum over micro-batches of max(largest group time, micro-batch floor) + optimizer step.
The number of micro-batches M takes the first five values from M_min = ceil(tokens / cluster capacity) at which
every micro-batch fits in the cluster's memory (FlexSP §4.2: M' = 5); the fastest wins. They are searched best
first: each count's bound is the micro-batches planned so far plus a lower bound for each of the others, and the
count with the least bound has its next micro-batch planned (longest sequences first: few of them, quick to plan,
their bound the loosest), until the least bound belongs to a fully planned count. The others' large micro-batches
(hundreds of short sequences, most of the planner's work) are mostly never planned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from paraplan.errors import ParaplanError
from paraplan.seqpar.blaster import blast, min_microbatches
from paraplan.seqpar.costmodel import SeqParCostModel, build_cost_model
from paraplan.seqpar.fast import MicroBatchSolution, solve_fast
from paraplan.seqpar.lengths import check_lengths
from paraplan.seqpar.milp import solve_milp
from paraplan.seqpar.placement import place_groups
from paraplan.seqpar.types import GroupAssignment, MicroBatchPlan, StepPlan

SOLVERS = ("fast", "milp")
MICROBATCH_TRIALS = 5          # FlexSP §4.2: M' = 5 candidate micro-batch counts


@dataclass
class MicroBatchCost:
    solution: MicroBatchSolution
    time_s: float              # max(makespan, floor)
    compute_s: float           # of the slowest group
    comm_s: float              # of the slowest group (all-to-all, exposed ring, fixed per-call parts)


@dataclass
class BatchPlan:
    """A planned step with its prediction; `to_step_plan` gives the shared StepPlan format."""
    lengths: list[int]
    microbatches: list[MicroBatchCost]
    step_s: float
    planner_s: float
    solver: str
    cost_model: SeqParCostModel = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def comm_s(self) -> float:
        return sum(mb.comm_s for mb in self.microbatches)

    @property
    def comm_share(self) -> float:
        """Communication of the slowest group of each micro-batch over the step time."""
        return self.comm_s / self.step_s if self.step_s else 0.0

    def layouts(self) -> list[str]:
        """FlexSP's notation per micro-batch: <32,16,8x2> (idle GPUs left out)."""
        out = []
        for mb in self.microbatches:
            counts: dict[str, int] = {}
            for t, members in sorted(mb.solution.groups, key=lambda g: -self.cost_model.shapes[g[0]].size):
                if members:
                    label = self.cost_model.shapes[t].label
                    counts[label] = counts.get(label, 0) + 1
            out.append("<" + ",".join(k if v == 1 else f"{k}x{v}" for k, v in counts.items()) + ">")
        return out

    def to_step_plan(self) -> StepPlan:
        cm = self.cost_model
        mbs = []
        for mb in self.microbatches:
            groups = mb.solution.groups
            ranks = place_groups([cm.shapes[t].size for t, _ in groups], cm.world_size, cm.gpus_per_node)
            assigned = [GroupAssignment(r, tuple(members)) for r, (_, members) in zip(ranks, groups)]
            taken = {x for r in ranks for x in r}
            assigned += [GroupAssignment((x,), ()) for x in range(cm.world_size) if x not in taken]
            assigned.sort(key=lambda g: g.ranks[0])
            mbs.append(MicroBatchPlan(tuple(assigned), mb.time_s))
        notes = tuple(self.notes) + tuple(
            f"micro-batch {i}: {layout}" for i, layout in enumerate(self.layouts()))
        return StepPlan(tuple(self.lengths), cm.world_size, tuple(mbs), self.step_s, notes)


def microbatch_cost(solution: MicroBatchSolution, lengths: np.ndarray, cm: SeqParCostModel,
                    seq_costs: np.ndarray | None = None) -> MicroBatchCost:
    """The micro-batch's time and the compute/communication split of its slowest group. `seq_costs`:
    cm.cost_matrix(lengths) when the caller has it (rows indexed like `lengths`)."""
    members = [k for _, ms in solution.groups for k in ms]
    rows = cm.cost_matrix(lengths[members]) if seq_costs is None else seq_costs[members]
    costs = dict(zip(members, rows.tolist()))        # one evaluation for all groups
    times = [cm.fixed_s[t] + sum(costs[k][t] for k in ms) if ms else 0.0 for t, ms in solution.groups]
    slowest = int(np.argmax(times))
    t, members = solution.groups[slowest]
    parts = cm.breakdown(lengths[members], t) if members else {"compute_s": 0.0, "comm_s": 0.0}
    return MicroBatchCost(solution, max(times[slowest], cm.microbatch_floor_s), parts["compute_s"], parts["comm_s"])


def check_fits(lengths: list[int], cm: SeqParCostModel) -> None:
    """One-line error naming the first sequence no group can hold."""
    biggest = max(cm.capacities)
    for i, s in enumerate(lengths):
        if s > biggest:
            largest = max(cm.shapes, key=lambda sh: sh.size)
            raise ParaplanError(f"sequence {i} has {s} tokens, more than the largest group ({largest.size} GPUs x "
                                f"{cm.tokens_per_rank} tokens per GPU = {int(biggest)}) can hold")


@dataclass
class _Count:
    """One micro-batch count in the search: its micro-batches, the lower bound of each, those planned so far."""
    m: int
    parts: list[np.ndarray]
    bounds: list[float]
    costs: list[MicroBatchCost] = field(default_factory=list)
    failed: bool = False

    def bound(self, step_fixed_s: float) -> float:
        """The step time if planned (all micro-batches planned), else a lower bound on it."""
        return sum(c.time_s for c in self.costs) + sum(self.bounds[len(self.costs):]) + step_fixed_s

    @property
    def done(self) -> bool:
        return len(self.costs) == len(self.parts)


def plan_batch(lengths, cm: SeqParCostModel, solver: str = "fast", microbatch_trials: int = MICROBATCH_TRIALS,
               milp_buckets: int | None = 16, milp_time_limit_s: float = 10.0) -> BatchPlan:
    """Plan one step: the fastest of `microbatch_trials` micro-batch counts (best-first search, see the module
    docstring). Raises ParaplanError when the batch cannot be planned."""
    if solver not in SOLVERS:
        raise ParaplanError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    lengths = check_lengths(lengths)
    check_fits(lengths, cm)
    arr = np.asarray(lengths, dtype=np.int64)
    # CPU seconds: the planner is single-threaded, and on a shared machine the wall clock measures the neighbours
    start = time.process_time()
    capacity = cm.world_size * cm.tokens_per_rank
    first = min_microbatches(arr, capacity)
    seq_costs = cm.cost_matrix(arr)                  # every sequence on every shape, once for all micro-batches
    # per sequence: its time alone on its best group, and its least GPU-seconds (a micro-batch's makespan is at
    # least the largest of the first and the sum of the second over the GPUs, as in fast.py)
    alone = (seq_costs + np.asarray(cm.fixed_s)[None, :]).min(axis=1)
    gpu_seconds = (seq_costs * cm.sizes[None, :]).min(axis=1)
    planned: dict[bytes, MicroBatchCost | None] = {}     # a micro-batch recurs across counts: plan it once

    def plan_part(part: np.ndarray) -> MicroBatchCost | None:
        key = part.tobytes()
        if key not in planned:
            if solver == "fast":
                sol = solve_fast(arr[part], cm, indices=part, floor_s=cm.microbatch_floor_s,
                                 seq_costs=seq_costs[part])
            else:
                sol = solve_milp(arr[part], cm, indices=part, buckets=milp_buckets,
                                 time_limit_s=milp_time_limit_s).solution
            planned[key] = None if sol is None else microbatch_cost(sol, arr, cm, seq_costs)
        return planned[key]

    counts: list[_Count] = []
    next_m = first

    def add_count() -> bool:
        """The next count whose micro-batches all fit in the cluster's memory (the others are skipped)."""
        nonlocal next_m
        while next_m <= len(arr):
            m, next_m = next_m, next_m + 1
            parts = blast(arr, m)
            if max(int(arr[p].sum()) for p in parts) > capacity:
                continue
            bounds = [max(float(alone[p].max()), float(gpu_seconds[p].sum()) / cm.world_size,
                          cm.microbatch_floor_s) for p in parts]
            counts.append(_Count(m, parts, bounds))
            return True
        return False

    for _ in range(microbatch_trials):
        if not add_count():
            break
    best: _Count | None = None
    while True:
        live = [c for c in counts if not c.failed]
        if not live:
            break
        count = min(live, key=lambda c: (c.bound(cm.step_fixed_s), c.m))
        if count.done:
            best = count
            break
        cost = plan_part(count.parts[len(count.costs)])
        if cost is None:
            count.failed = True            # some micro-batch does not pack at this count: try one more count
            add_count()
        else:
            count.costs.append(cost)
    if best is None:
        raise ParaplanError(f"no plan found for the batch of {len(arr)} sequences with {first}..{next_m - 1} "
                            "micro-batches")
    step = sum(c.time_s for c in best.costs) + cm.step_fixed_s
    return BatchPlan(lengths, best.costs, step, time.process_time() - start, solver, cm)


def plan_step(lengths, model, cluster, *, max_tokens_per_rank: int | None = None, solver: str = "fast",
              framework: str = "deepspeed", recompute: str = "none", sizes: str = "pow2", ring: bool = False,
              memory_limit_gib: float | None = None, microbatch_trials: int = MICROBATCH_TRIALS) -> StepPlan:
    """The step plan for one global batch (the runtime's entry point): micro-batches, groups on contiguous rank
    ranges, the sequences of each group, predicted times. `max_tokens_per_rank` overrides the memory model."""
    cm = build_cost_model(model, cluster, framework=framework, recompute=recompute,
                          max_tokens_per_rank=max_tokens_per_rank, memory_limit_gib=memory_limit_gib,
                          sizes=sizes, ring=ring)
    plan = plan_batch(lengths, cm, solver=solver, microbatch_trials=microbatch_trials)
    step = plan.to_step_plan()
    step.validate(cm.tokens_per_rank)
    return step
