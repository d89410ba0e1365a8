"""Estimate one heterogeneous plan by reusing the homogeneous cost model stage by stage.

Each stage i is costed as pipeline rank i of a homogeneous *view*: its own node group's GPU, calibration and links,
the plan's layer split, pp = number of stages, the plan's cp and vpp, and that stage's tp, dp, ZeRO and recompute
(estimate.prepare gives
its per-micro-batch forward/backward, the DP gradient reduction over its dp ranks and its optimizer step). The views
are put together in the event simulator (sim/engine.py), with each stage's send to its neighbour costed on the link
that joins their groups, and memory is judged per stage on that stage's GPU. No cost formula is written here.

Pipeline sends: Megatron's 1F1B blocks the sender's compute stream for the send (estimate.py), so a hop's time is
folded into the sending op (forward of stage i -> i+1, backward of stage i -> i-1); this equals the simulator's
scalar p2p when every hop costs the same, and is exact per hop otherwise. Engines that overlap sends, and the
interleaved schedule (Megatron overlaps its sends, --overlap-p2p-comm), get the slowest hop as the simulator's
(overlapped) p2p time; with interleaving that includes the hop from the last stage back to the first (chunk c to
c + 1) when they are on different groups.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from paraplan.cost import comm, compute, memory
from paraplan.cost.calibration import calibration_for
from paraplan.errors import ParaplanError
from paraplan.estimate import _stage_costs, prepare
from paraplan.frameworks import MEGATRON_FAMILY, strategy_defaults
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan, HeteroStage, StageResult
from paraplan.sim.engine import PipelineCosts, peak_inflight, simulate_pipeline
from paraplan.specs import ClusterSpec, JobSpec, LinkSpec, ModelSpec, Strategy
from paraplan.specs.cluster import NodeGroup
from paraplan.specs.topology import first_nodes, group_graph, node_links, sends_bottleneck, widest_path


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
                 layers: tuple[int, ...] | None, cp: int = 1, vpp: int = 1) -> Strategy:
        d = strategy_defaults(self.job.framework, tp, self.job.precision)
        d.update(zero=zero, recompute=recompute)
        if vpp > 1:
            d["schedule"] = "interleaved"
        return Strategy(dp=dp, tp=tp, pp=pp, cp=cp, vpp=vpp, micro_batch=micro_batch, layers_per_stage=layers, **d)

    def view(self, group: int, tp: int, dp: int, pp: int, mb_sequences: int, zero: int, recompute: str,
             layers: tuple[int, ...] | None, cp: int = 1, vpp: int = 1) -> StageView:
        g = self.cluster.node_groups[group]
        n = tp * cp * dp
        if n % g.gpus_per_node and g.gpus_per_node % n:
            raise ParaplanError(f"a stage of {n} GPUs (tp={tp} x cp={cp} x dp={dp}) on nodes of {g.gpus_per_node} "
                                f"{g.gpu.name}: its size must divide or be a multiple of gpus_per_node")
        # a homogeneous cluster of pp stages like this one: whole nodes, or (small stages) one "node" per stage,
        # which places TP and DP groups exactly as inside one real node
        per_node = min(n, g.gpus_per_node)
        view_cluster = ClusterSpec(f"{self.cluster.name}[{group}]",
                                   (NodeGroup(g.gpu, pp * n // per_node, per_node, g.intra_node, g.inter_node),))
        s = self.strategy(tp, dp, pp, mb_sequences // dp, zero, recompute, layers, cp, vpp)
        m = self.job.global_batch // mb_sequences
        job = JobSpec(m * dp * s.micro_batch, self.job.seq_len, self.job.precision, self.job.framework,
                      self.job.memory_headroom)
        return StageView(view_cluster, s, job, group)

    def layer_time(self, group: int, tp: int, dp: int, mb_sequences: int, zero: int, recompute: str,
                   cp: int = 1) -> float:
        """Forward + backward seconds of one layer for one micro-batch on a stage of this shape: the cheaper kind
        where dense and MoE layers alternate, so that the search's bounds (m x layers x this) stay below the
        simulated time whatever layers a stage gets."""
        key = (group, tp, dp, mb_sequences, zero, recompute) + ((cp,) if cp > 1 else ())
        if key not in self.layer_times:
            v = self.view(group, tp, dp, 1, mb_sequences, zero, recompute, None, cp)
            kinds = {self.model.is_moe_layer(i): i for i in range(self.model.layers)}   # one layer of each kind
            costs = _stage_costs(self.model, v.job, v.strategy, v.cluster, self.cals[group],
                                 [[i] for i in kinds.values()], self.caches[group])
            self.layer_times[key] = min(sc.forward_s + sc.backward_s for sc in costs)
        return self.layer_times[key]

    def edge_time(self, group: int, tp: int, dp: int, mb_sequences: int, first: bool, last: bool,
                  cp: int = 1) -> float:
        """Per micro-batch seconds a stage spends outside its layers: embedding (first), LM head (last), and the
        framework's per-micro-batch overhead."""
        key = ("edge", group, tp, dp, mb_sequences, first, last) + ((cp,) if cp > 1 else ())
        if key not in self.layer_times:
            self.layer_times[key] = self._edge_time(group, tp, dp, mb_sequences, first, last, cp)
        return self.layer_times[key]

    def _edge_time(self, group: int, tp: int, dp: int, mb_sequences: int, first: bool, last: bool,
                   cp: int = 1) -> float:
        v = self.view(group, tp, dp, 1, mb_sequences, 0, "none", None, cp)
        gpu, cal = v.cluster.gpu, self.cals[group]
        t = cal.microbatch_overhead_s
        if first:
            t += sum(compute.embedding_time(self.model, v.job, v.strategy, gpu, cal))
        if last:
            t += sum(compute.head_time(self.model, v.job, v.strategy, gpu, cal))
        return t


def link_between(cluster: ClusterSpec, i: int, j: int) -> LinkSpec:
    """The link node groups i and j talk over: the cluster file's `group_links` entry for the pair (a cross-zone
    path), else the slower of their network links (each end's NIC per GPU); where the file marks the pair down,
    the widest path relayed through other groups (specs.topology.widest_path)."""
    link = group_graph(cluster)[(min(i, j), max(i, j))]
    if link is None:
        link = widest_path(cluster, i, j)
    if link is None:
        raise ParaplanError(f"cluster {cluster.name!r}: node groups {i} and {j} have no path between them")
    return link


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
    Each of the min(dp_i, dp_i+1) senders/receivers moves its share; sequence parallelism shards it over tp and each
    cp rank sends its own chunk of the sequence."""
    cluster, job, model = ctx.cluster, ctx.job, ctx.model
    places = placement(cluster, plan)
    first, overrides = first_nodes(cluster), node_links(cluster)
    out = []
    for i in range(plan.pp - 1):
        a, b = plan.stages[i], plan.stages[i + 1]
        ga, gb = cluster.node_groups[a.group], cluster.node_groups[b.group]
        sp = [v.strategy.tp if v.strategy.sequence_parallel else 1 for v in views[i:i + 2]]
        nbytes = plan.microbatch_sequences * job.seq_len * model.hidden * 2 / (min(a.dp, b.dp) * min(sp) * a.cp)
        cal = ctx.cals[a.group]
        nodes_a = {first[a.group] + g // ga.gpus_per_node for g in range(*places[i])}
        nodes_b = {first[b.group] + g // gb.gpus_per_node for g in range(*places[i + 1])}
        # which sender pairs with which receiver is not known here: any node pair between the stages counts
        cap = sends_bottleneck(frozenset((x, y) for x in nodes_a for y in nodes_b), overrides) if overrides else None
        if a.group == b.group:
            crosses = nodes_a != nodes_b or len(nodes_a) > 1
            share = ga.inter_node.p2p_share(len(nodes_a), ga.num_nodes)
            out.append(comm.p2p_time(nbytes, crosses, ga.intra_node, ga.inter_node, cal, share, cap))
        else:
            out.append(comm.p2p_time(nbytes, True, ga.intra_node, link_between(cluster, a.group, b.group), cal,
                                     cap=cap))
    return out


def schedule_of(plan: HeteroPlan) -> str:
    return "interleaved" if plan.vpp > 1 else "1f1b"


def stage_shape(st: HeteroStage) -> tuple:
    """What a stage's view depends on besides the plan (stages of one shape share it)."""
    return st.group, st.tp, st.cp, st.dp, st.zero, st.recompute


def stage_view(ctx: HeteroContext, plan: HeteroPlan, st: HeteroStage) -> StageView:
    return ctx.view(st.group, st.tp, st.dp, plan.pp, plan.microbatch_sequences, st.zero, st.recompute,
                    plan.virtual_layers(), st.cp, plan.vpp)


def plan_hops(ctx: HeteroContext, plan: HeteroPlan, views: list[StageView]) -> tuple[list[float], float]:
    """(hop_times of the plan, the interleaved schedule's hop from the last stage back to the first, 0 without
    interleaving or when both are on one group: that hop is then one of the group's own)."""
    hops = hop_times(ctx, plan, views)
    wrap = 0.0
    last, first = plan.stages[-1], plan.stages[0]
    if plan.vpp > 1 and last.group != first.group:
        ring = HeteroPlan((replace(last, layers=1), replace(first, layers=1)), plan.microbatch_sequences)
        wrap = hop_times(ctx, ring, [views[-1], views[0]])[0]
    return hops, wrap


def stage_memory(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, plan: HeteroPlan,
                 ctx: HeteroContext | None = None) -> list:
    """MemoryBreakdown of every stage on its own GPU. Known before any time is computed: the in-flight
    micro-batches are a property of the 1F1B order alone (sim.engine.peak_inflight)."""
    ctx = ctx or HeteroContext(model, cluster, job)
    m = job.global_batch // plan.microbatch_sequences
    inflight = peak_inflight(schedule_of(plan), plan.pp, plan.vpp, m)
    out, mems = [], {}
    for i, st in enumerate(plan.stages):
        key = stage_shape(st)
        if key not in mems:
            v = stage_view(ctx, plan, st)
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
    pp, vpp = plan.pp, plan.vpp
    m = job.global_batch // plan.microbatch_sequences
    shape = [stage_shape(st) for st in plan.stages]
    by_shape: dict = {}                # stages of one shape share their view (rank i of it is stage i)
    for i, key in enumerate(shape):
        if key not in by_shape:
            v = stage_view(ctx, plan, plan.stages[i])
            try:
                p = prepare(model, v.cluster, v.job, v.strategy, calibration=ctx.cals[v.group],
                            layer_cache=ctx.caches[v.group])
            except ParaplanError as exc:
                raise ParaplanError(f"stage {i}: {exc}") from None
            by_shape[key] = (v, p)
    views = [by_shape[k][0] for k in shape]
    preps = [by_shape[k][1] for k in shape]
    hops, wrap = plan_hops(ctx, plan, views)
    fwd = [list(p.forward_s[i]) for i, p in enumerate(preps)]
    bwd = [list(p.backward_s[i]) for i, p in enumerate(preps)]
    fold = job.framework in MEGATRON_FAMILY and vpp == 1
    if fold:
        for i, h in enumerate(hops):
            fwd[i][0] += h
            bwd[i + 1][0] += h
        costs = PipelineCosts(fwd, bwd, 0.0, p2p_overlapped=False)
    else:
        costs = PipelineCosts(fwd, bwd, max(hops + [wrap]), p2p_overlapped=True)
    pipe = simulate_pipeline(schedule_of(plan), pp, vpp, m, costs, record_events=False)
    finish = [pipe.last_backward_end_s[i] + preps[i].dp_exposed[i] + preps[i].optimizer_s[i] for i in range(pp)]
    critical = max(range(pp), key=lambda i: finish[i])
    overhead = max(ctx.cals[st.group].iteration_overhead_s for st in plan.stages)
    iteration = finish[critical] + overhead
    stages = []
    mems = stage_memory(model, cluster, job, plan, ctx)
    for i, (v, p) in enumerate(zip(views, preps)):
        mem = mems[i]
        stages.append(StageResult(v.cluster.gpu.name, sum(fwd[i]), sum(bwd[i]), hops[i] if i < len(hops) else wrap,
                                  p.dp_exposed[i], p.optimizer_s[i], mem, pipe.busy_s[i], pipe.bubble_s[i]))
    flops = compute.model_flops_per_iteration(model, job)
    assumptions = [] if fold else ["pipeline sends overlapped; every hop costed as the slowest one"]
    if vpp > 1:
        assumptions.append(f"interleaved 1F1B, each stage's layers split over {vpp} chunks "
                           f"(Megatron --pipeline-model-parallel-layout when uneven)")
    return HeteroEstimate(plan, iteration, job.tokens_per_step / iteration,
                          flops / iteration / plan.num_gpus / 1e12, stages, critical, assumptions)


def is_homogeneous_equivalent(plan: HeteroPlan) -> bool:
    """Every stage has the same shape (then a homogeneous Strategy describes the plan too)."""
    return len({stage_shape(s) for s in plan.stages}) == 1


def as_strategy(ctx: HeteroContext, plan: HeteroPlan) -> Strategy:
    """The homogeneous Strategy of a plan whose stages all share one shape."""
    if not is_homogeneous_equivalent(plan):
        raise ParaplanError("only a plan whose stages share group, tp, cp, dp, zero and recompute is a Strategy")
    st = plan.stages[0]
    return ctx.strategy(st.tp, st.dp, plan.pp, plan.microbatch_sequences // st.dp, st.zero, st.recompute,
                        plan.virtual_layers(), st.cp, plan.vpp)


