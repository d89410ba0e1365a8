"""One training step of variable-length sequences: blast the batch into micro-batches, plan each one's groups
(fast planner or MILP), place the groups on ranks, and predict the step time (FlexSP Alg. 1).

step time = sum over micro-batches of max(largest group time, micro-batch floor) + optimizer step.
The number of micro-batches M is tried from M_min = ceil(tokens / cluster capacity) up to M_min + 4 (FlexSP §4.2:
M' = 5), skipping those where some micro-batch cannot be planned; the fastest wins.
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


def microbatch_cost(solution: MicroBatchSolution, lengths: np.ndarray, cm: SeqParCostModel) -> MicroBatchCost:
    members = [k for _, ms in solution.groups for k in ms]
    costs = dict(zip(members, cm.cost_matrix(lengths[members]).tolist()))     # one evaluation for all groups
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


def plan_batch(lengths, cm: SeqParCostModel, solver: str = "fast", microbatch_trials: int = MICROBATCH_TRIALS,
               milp_buckets: int | None = 16, milp_time_limit_s: float = 10.0,
               stop_when_worse: bool = True) -> BatchPlan:
    """Plan one step. Raises ParaplanError when the batch cannot be planned. With `stop_when_worse` the
    micro-batch counts are tried upwards only while the step gets faster (all `microbatch_trials` otherwise)."""
    if solver not in SOLVERS:
        raise ParaplanError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    lengths = check_lengths(lengths)
    check_fits(lengths, cm)
    arr = np.asarray(lengths, dtype=np.int64)
    # CPU seconds: the planner is single-threaded, and on a shared machine the wall clock measures the neighbours
    start = time.process_time()
    first = min_microbatches(arr, cm.world_size * cm.tokens_per_rank)
    best: BatchPlan | None = None
    tried = 0
    m = first
    while tried < microbatch_trials and m <= len(arr):
        parts = blast(arr, m)
        costs = []
        so_far = cm.step_fixed_s
        for part in parts:
            if best is not None and so_far >= best.step_s:
                break                      # already slower than the best count: the rest cannot help
            if solver == "fast":
                sol = solve_fast(arr[part], cm, indices=part, floor_s=cm.microbatch_floor_s)
            else:
                sol = solve_milp(arr[part], cm, indices=part, buckets=milp_buckets,
                                 time_limit_s=milp_time_limit_s).solution
            if sol is None:
                break
            costs.append(microbatch_cost(sol, arr, cm))
            so_far += costs[-1].time_s
        m += 1
        if len(costs) < len(parts):
            if best is not None and so_far >= best.step_s:
                tried += 1
                if stop_when_worse:
                    break
            continue                       # some micro-batch does not fit at this M: try more micro-batches
        tried += 1
        step = sum(c.time_s for c in costs) + cm.step_fixed_s
        if best is None or step < best.step_s:
            best = BatchPlan(lengths, costs, step, 0.0, solver, cm)
        elif stop_when_worse:
            break                          # FlexSP's takeaway 1: fewer micro-batches are usually faster
    if best is None:
        raise ParaplanError(f"no plan found for the batch of {len(arr)} sequences with {first}..{m - 1} "
                            "micro-batches")
    best.planner_s = time.process_time() - start
    return best


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
