"""The layouts FlexSP is measured against, planned with the same cost model, blaster and packer:

- static Ulysses SP of degree d (DeepSpeed-Ulysses + ZeRO-3): every micro-batch has N/d groups of d, the degree
  fixed for the whole run;
- static context parallelism of degree d (Megatron-LM style, FlexSP's tuned baseline: TP with sequence
  parallelism inside a node, TP = min(d, GPUs per node), times a CP ring across nodes, K/V passed around the ring
  and overlapped with the attention kernel; parameters ZeRO-3-sharded like the others, where Megatron would use
  TP + ZeRO-1: the same memory for activations, more parameter traffic);
- per-batch best homogeneous Ulysses degree (FlexSP-BatchAda): the best static degree, chosen again every batch.

A static degree that cannot hold some sequence of a batch is infeasible for that batch (and so for the run).
"""
from __future__ import annotations

from dataclasses import dataclass

from paraplan.errors import ParaplanError
from paraplan.seqpar.costmodel import GroupShape, SeqParCostModel, build_cost_model, ulysses_degree_ok
from paraplan.seqpar.planner import BatchPlan, plan_batch


@dataclass(frozen=True)
class Baseline:
    name: str                  # "ulysses-16", "cp-64"
    kind: str                  # "ulysses" or "cp"
    degree: int
    cost_model: SeqParCostModel


def baseline_layouts(model, cluster, **cost_kwargs) -> list[Baseline]:
    """Every static Ulysses degree the heads allow and every CP degree, as powers of two dividing the world."""
    n = cluster.num_gpus
    out = []
    degrees = [1 << i for i in range(n.bit_length()) if (1 << i) <= n and n % (1 << i) == 0]
    for d in degrees:
        if ulysses_degree_ok(model, d):
            out.append(Baseline(f"ulysses-{d}", "ulysses", d,
                                build_cost_model(model, cluster, shapes=(GroupShape(d, d, 1),), **cost_kwargs)))
    gpn = min(cluster.gpus_per_node, n)
    for d in degrees:
        tp = max(t for t in range(1, min(d, gpn) + 1) if d % t == 0 and ulysses_degree_ok(model, t))
        if d > 1:
            out.append(Baseline(f"cp-{d}", "cp", d,
                                build_cost_model(model, cluster, shapes=(GroupShape(d, 1, d // tp, tp),),
                                                 **cost_kwargs)))
    return out


def plan_baseline(lengths, baseline: Baseline, microbatch_trials: int = 5) -> BatchPlan | None:
    """The baseline's plan of one batch, or None when the degree cannot hold some sequence."""
    if max(lengths) > baseline.degree * baseline.cost_model.tokens_per_rank:
        return None
    try:
        return plan_batch(lengths, baseline.cost_model, microbatch_trials=microbatch_trials)
    except ParaplanError:
        return None


@dataclass
class Comparison:
    """Step times of one batch under FlexSP-style planning and every baseline (None: infeasible)."""
    flexsp: BatchPlan
    baselines: dict[str, BatchPlan | None]

    def best(self, kind: str) -> tuple[str, BatchPlan] | None:
        """The fastest feasible baseline of a kind for this batch (BatchAda when kind == "ulysses")."""
        options = [(name, p) for name, p in self.baselines.items() if p is not None and name.startswith(kind)]
        return min(options, key=lambda x: x[1].step_s) if options else None


def compare_batch(lengths, flexsp_cost_model: SeqParCostModel, baselines: list[Baseline],
                  solver: str = "fast") -> Comparison:
    plan = plan_batch(lengths, flexsp_cost_model, solver=solver)
    return Comparison(plan, {b.name: plan_baseline(lengths, b) for b in baselines})


def best_static(comparisons: list[Comparison], kind: str, baselines: list[Baseline],
                max_len: int | None = None) -> tuple[str, float] | None:
    """The degree of `kind` with the least total time over all batches, among those feasible for every batch and,
    with `max_len`, able to hold a sequence of the maximum length (a static run is configured for its longest
    context: FlexSP §6.2, DeepSpeed needs SP=64 at 384K)."""
    totals = {}
    for b in baselines:
        name = b.name
        if b.kind != kind or (max_len is not None and b.degree * b.cost_model.tokens_per_rank < max_len):
            continue
        plans = [c.baselines.get(name) for c in comparisons]
        if all(p is not None for p in plans):
            totals[name] = sum(p.step_s for p in plans)
    if not totals:
        return None
    name = min(totals, key=totals.get)
    return name, totals[name]
