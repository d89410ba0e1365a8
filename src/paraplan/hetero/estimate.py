"""Estimate one heterogeneous plan by reusing the homogeneous cost model stage by stage.

Each stage i is costed as pipeline rank i of a homogeneous *view*: its own node group's GPU, calibration and links,
the plan's layer split, pp = number of stages, and that stage's tp, dp, ZeRO and recompute (estimate.prepare gives
its per-micro-batch forward/backward, the DP gradient reduction over its dp ranks and its optimizer step). The views
are put together in the event simulator (sim/engine.py), with each stage's send to its neighbour costed on the link
that joins their groups, and memory is judged per stage on that stage's GPU. No cost formula is written here.

Pipeline sends: Megatron's 1F1B blocks the sender's compute stream for the send (estimate.py), so a hop's time is
folded into the sending op (forward of stage i -> i+1, backward of stage i -> i-1); this equals the simulator's
scalar p2p when every hop costs the same, and is exact per hop otherwise. Engines that overlap sends get the
slowest hop as the simulator's (overlapped) p2p time.
"""
from __future__ import annotations

from dataclasses import dataclass

from paraplan.cost import comm, compute, memory
from paraplan.cost.calibration import calibration_for
from paraplan.errors import ParaplanError
from paraplan.estimate import _stage_costs, prepare
from paraplan.frameworks import MEGATRON_FAMILY, strategy_defaults
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan, StageResult
from paraplan.sim.engine import PipelineCosts, peak_inflight, simulate_pipeline
from paraplan.specs import ClusterSpec, JobSpec, LinkSpec, ModelSpec, Strategy
from paraplan.specs.cluster import NodeGroup


@dataclass
class StageView:
    """Stage i of a plan seen as rank i of a homogeneous job (see the module docstring)."""
    cluster: ClusterSpec
    strategy: Strategy
    job: JobSpec
    group: int


class HeteroContext:
    """Model, cluster and job of a search or estimate, with per-group calibrations and cost caches."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, job: JobSpec, calibrations: dict | None = None):
        self.model, self.cluster, self.job = model, cluster, job
        self.cals = calibrations or {}
        for i, g in enumerate(cluster.node_groups):
            self.cals.setdefault(i, calibration_for(g.gpu.name, job.framework))
        self.caches: dict[int, dict] = {i: {} for i in range(len(cluster.node_groups))}
        self.layer_times: dict = {}

    # ---- views -------------------------------------------------------------------------------------------------
    def strategy(self, tp: int, dp: int, pp: int, micro_batch: int, zero: int, recompute: str,
                 layers: tuple[int, ...] | None) -> Strategy:
        d = strategy_defaults(self.job.framework, tp, self.job.precision)
        d.update(zero=zero, recompute=recompute)
        return Strategy(dp=dp, tp=tp, pp=pp, micro_batch=micro_batch, layers_per_stage=layers, **d)

    def view(self, group: int, tp: int, dp: int, pp: int, mb_sequences: int, zero: int, recompute: str,
             layers: tuple[int, ...] | None) -> StageView:
        g = self.cluster.node_groups[group]
        n = tp * dp
        if n % g.gpus_per_node and g.gpus_per_node % n:
            raise ParaplanError(f"a stage of {n} GPUs (tp={tp} x dp={dp}) on nodes of {g.gpus_per_node} "
                                f"{g.gpu.name}: its size must divide or be a multiple of gpus_per_node")
        # a homogeneous cluster of pp stages like this one: whole nodes, or (small stages) one "node" per stage,
        # which places TP and DP groups exactly as inside one real node
        per_node = min(n, g.gpus_per_node)
        view_cluster = ClusterSpec(f"{self.cluster.name}[{group}]",
                                   (NodeGroup(g.gpu, pp * n // per_node, per_node, g.intra_node, g.inter_node),))
        s = self.strategy(tp, dp, pp, mb_sequences // dp, zero, recompute, layers)
        m = self.job.global_batch // mb_sequences
        job = JobSpec(m * dp * s.micro_batch, self.job.seq_len, self.job.precision, self.job.framework,
                      self.job.memory_headroom)
        return StageView(view_cluster, s, job, group)

    def layer_time(self, group: int, tp: int, dp: int, mb_sequences: int, zero: int, recompute: str) -> float:
        """Forward + backward seconds of one layer for one micro-batch on a stage of this shape: the cheaper kind
        where dense and MoE layers alternate, so that the search's bounds (m x layers x this) stay below the
        simulated time whatever layers a stage gets."""
        key = (group, tp, dp, mb_sequences, zero, recompute)
        if key not in self.layer_times:
            v = self.view(group, tp, dp, 1, mb_sequences, zero, recompute, None)
            kinds = {self.model.is_moe_layer(i): i for i in range(self.model.layers)}   # one layer of each kind
            costs = _stage_costs(self.model, v.job, v.strategy, v.cluster, self.cals[group],
                                 [[i] for i in kinds.values()], self.caches[group])
            self.layer_times[key] = min(sc.forward_s + sc.backward_s for sc in costs)
        return self.layer_times[key]

    def edge_time(self, group: int, tp: int, dp: int, mb_sequences: int, first: bool, last: bool) -> float:
        """Per micro-batch seconds a stage spends outside its layers: embedding (first), LM head (last), and the
        framework's per-micro-batch overhead."""
        key = ("edge", group, tp, dp, mb_sequences, first, last)
        if key not in self.layer_times:
            self.layer_times[key] = self._edge_time(group, tp, dp, mb_sequences, first, last)
        return self.layer_times[key]

    def _edge_time(self, group: int, tp: int, dp: int, mb_sequences: int, first: bool, last: bool) -> float:
        v = self.view(group, tp, dp, 1, mb_sequences, 0, "none", None)
        gpu, cal = v.cluster.gpu, self.cals[group]
        t = cal.microbatch_overhead_s
        if first:
            t += sum(compute.embedding_time(self.model, v.job, v.strategy, gpu, cal))
        if last:
            t += sum(compute.head_time(self.model, v.job, v.strategy, gpu, cal))
        return t


def link_between(cluster: ClusterSpec, i: int, j: int) -> LinkSpec:
    """The link node groups i and j talk over: the cluster file's `group_links` entry for the pair (a cross-zone
    path), else the slower of their network links (each end's NIC per GPU)."""
    for pair, link in cluster.extra.get("group_links", ()):
        if pair == (min(i, j), max(i, j)):
            return link
    a, b = cluster.node_groups[i], cluster.node_groups[j]
    slow = min((a.inter_node, b.inter_node), key=lambda link: link.bandwidth_gbps)
    return LinkSpec(slow.name, slow.bandwidth_gbps, max(a.inter_node.latency_us, b.inter_node.latency_us))


def placement(cluster: ClusterSpec, plan: HeteroPlan) -> list[tuple[int, int]]:
    """(first GPU, last GPU + 1) of each stage inside its node group: stages packed in order, each aligned to a
    multiple of its size (or of a node, for stages of whole nodes)."""
    used = [0] * len(cluster.node_groups)
    out = []
    for i, st in enumerate(plan.stages):
        if not 0 <= st.group < len(cluster.node_groups):
            raise ParaplanError(f"stage {i}: node group {st.group} does not exist; the cluster has "
                                f"{len(cluster.node_groups)} (0..{len(cluster.node_groups) - 1})")
        g = cluster.node_groups[st.group]
        align = min(st.num_gpus, g.gpus_per_node)
        start = -(-used[st.group] // align) * align
        end = start + st.num_gpus
        if end > g.num_gpus:
            raise ParaplanError(f"stage {i}: node group {st.group} ({g.num_gpus} x {g.gpu.name}) has no room for "
                                f"{st.num_gpus} more GPUs ({used[st.group]} already used by earlier stages)")
        used[st.group] = end
        out.append((start, end))
    return out


def hop_times(ctx: HeteroContext, plan: HeteroPlan, views: list[StageView]) -> list[float]:
    """Seconds of one micro-batch's activation (or gradient) send from stage i to i+1, on the link between them.
    Each of the min(dp_i, dp_i+1) senders/receivers moves its share; sequence parallelism shards it over tp."""
    cluster, job, model = ctx.cluster, ctx.job, ctx.model
    places = placement(cluster, plan)
    out = []
    for i in range(plan.pp - 1):
        a, b = plan.stages[i], plan.stages[i + 1]
        ga = cluster.node_groups[a.group]
        sp = [v.strategy.tp if v.strategy.sequence_parallel else 1 for v in views[i:i + 2]]
        nbytes = plan.microbatch_sequences * job.seq_len * model.hidden * 2 / (min(a.dp, b.dp) * min(sp))
        cal = ctx.cals[a.group]
        if a.group == b.group:
            gpn = ga.gpus_per_node
            nodes_a = {g // gpn for g in range(*places[i])}
            nodes_b = {g // gpn for g in range(*places[i + 1])}
            crosses = nodes_a != nodes_b or len(nodes_a) > 1
            out.append(comm.p2p_time(nbytes, crosses, ga.intra_node, ga.inter_node, cal))
        else:
            out.append(comm.p2p_time(nbytes, True, ga.intra_node, link_between(cluster, a.group, b.group), cal))
    return out


def stage_memory(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: HeteroPlan,
                 ctx: HeteroContext | None = None) -> list:
    """MemoryBreakdown of every stage on its own GPU. Known before any time is computed: the in-flight
    micro-batches are a property of the 1F1B order alone (sim.engine.peak_inflight)."""
    ctx = ctx or HeteroContext(model, cluster, job)
    pp, layers = plan.pp, plan.layers_per_stage
    m = job.global_batch // plan.microbatch_sequences
    inflight = peak_inflight("1f1b", pp, 1, m)
    out, mems = [], {}
    for i, st in enumerate(plan.stages):
        key = (st.group, st.tp, st.dp, st.zero, st.recompute)
        if key not in mems:
            v = ctx.view(st.group, st.tp, st.dp, pp, plan.microbatch_sequences, st.zero, st.recompute, layers)
            mems[key] = memory.memory_by_rank(model, v.job, v.strategy, v.cluster.gpu, inflight_microbatches=inflight)
        out.append(mems[key][i])
    return out


def estimate_hetero(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: HeteroPlan,
                    ctx: HeteroContext | None = None) -> HeteroEstimate:
    """Iteration time, throughput and per-stage memory of `plan`. Raises ParaplanError when it is invalid."""
    ctx = ctx or HeteroContext(model, cluster, job)
    placement(cluster, plan)                  # every stage on an existing group, with room for it
    if sum(plan.layers_per_stage) != model.layers:
        raise ParaplanError(f"layers per stage {plan.layers_per_stage} sum to {sum(plan.layers_per_stage)}, "
                            f"the model has {model.layers}")
    if job.global_batch % plan.microbatch_sequences:
        raise ParaplanError(f"global batch {job.global_batch} is not a multiple of the micro-batch "
                            f"({plan.microbatch_sequences} sequences)")
    pp, layers = plan.pp, plan.layers_per_stage
    m = job.global_batch // plan.microbatch_sequences
    shape = [(st.group, st.tp, st.dp, st.zero, st.recompute) for st in plan.stages]
    by_shape: dict = {}                # stages of one shape share their view (rank i of it is stage i)
    for i, key in enumerate(shape):
        if key not in by_shape:
            st = plan.stages[i]
            v = ctx.view(st.group, st.tp, st.dp, pp, plan.microbatch_sequences, st.zero, st.recompute, layers)
            try:
                p = prepare(model, v.cluster, v.job, v.strategy, calibration=ctx.cals[v.group],
                            layer_cache=ctx.caches[v.group])
            except ParaplanError as exc:
                raise ParaplanError(f"stage {i}: {exc}") from None
            by_shape[key] = (v, p)
    views = [by_shape[k][0] for k in shape]
    preps = [by_shape[k][1] for k in shape]
    hops = hop_times(ctx, plan, views)
    fwd = [[p.forward_s[i][0]] for i, p in enumerate(preps)]
    bwd = [[p.backward_s[i][0]] for i, p in enumerate(preps)]
    fold = job.framework in MEGATRON_FAMILY
    if fold:
        for i, h in enumerate(hops):
            fwd[i][0] += h
            bwd[i + 1][0] += h
        costs = PipelineCosts(fwd, bwd, 0.0, p2p_overlapped=False)
    else:
        costs = PipelineCosts(fwd, bwd, max(hops, default=0.0), p2p_overlapped=True)
    pipe = simulate_pipeline("1f1b", pp, 1, m, costs, record_events=False)
    finish = [pipe.last_backward_end_s[i] + preps[i].dp_exposed[i] + preps[i].optimizer_s[i] for i in range(pp)]
    critical = max(range(pp), key=lambda i: finish[i])
    overhead = max(ctx.cals[st.group].iteration_overhead_s for st in plan.stages)
    iteration = finish[critical] + overhead
    stages = []
    mems = stage_memory(model, cluster, job, plan, ctx)
    for i, (v, p) in enumerate(zip(views, preps)):
        mem = mems[i]
        stages.append(StageResult(v.cluster.gpu.name, fwd[i][0], bwd[i][0], hops[i] if i < len(hops) else 0.0,
                                  p.dp_exposed[i], p.optimizer_s[i], mem, pipe.busy_s[i], pipe.bubble_s[i]))
    flops = compute.model_flops_per_iteration(model, job)
    assumptions = [] if fold else ["pipeline sends overlapped; every hop costed as the slowest one"]
    return HeteroEstimate(plan, iteration, job.tokens_per_step / iteration,
                          flops / iteration / plan.num_gpus / 1e12, stages, critical, assumptions)


def is_homogeneous_equivalent(plan: HeteroPlan) -> bool:
    """Every stage has the same shape (then a homogeneous Strategy describes the plan too)."""
    first = plan.stages[0]
    return all((s.group, s.tp, s.dp, s.zero, s.recompute) == (first.group, first.tp, first.dp, first.zero,
                                                                first.recompute) for s in plan.stages)


def as_strategy(ctx: HeteroContext, plan: HeteroPlan) -> Strategy:
    """The homogeneous Strategy of a plan whose stages all share one shape."""
    if not is_homogeneous_equivalent(plan):
        raise ParaplanError("only a plan whose stages share group, tp, dp, zero and recompute is a Strategy")
    st = plan.stages[0]
    return ctx.strategy(st.tp, st.dp, plan.pp, plan.microbatch_sequences // st.dp, st.zero, st.recompute,
                        plan.layers_per_stage)


