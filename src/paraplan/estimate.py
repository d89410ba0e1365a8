"""One iteration of one strategy: per-stage costs -> pipeline simulation -> DP/optimizer tail -> Plan.

The same function serves `paraplan estimate`, validation against measured runs and the search's final ranking.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from paraplan.cost import comm, compute, memory
from paraplan.cost.calibration import Calibration, calibration_for
from paraplan.errors import ParaplanError
from paraplan.frameworks import MEGATRON_FAMILY, grad_reduce_bytes_per_param, reduces_in_backward
from paraplan.sim.engine import PipelineCosts, peak_inflight, simulate_pipeline
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Plan, Strategy
from paraplan.specs.plan import MemoryBreakdown, Timeline, TimeBreakdown
from paraplan.specs.strategy import check, default_layer_split
from paraplan.specs.topology import node_links

MAX_MICROBATCHES = 16_384            # event simulation cost grows with m; real jobs use tens to hundreds
MEGATRON_BUCKET_PARAMS = 40_000_000   # Megatron DDP bucket: max(40M, 1M * dp) parameters (distributed.py)


@dataclass
class _StageCost:
    """One pipeline chunk, one micro-batch."""
    forward_s: float = 0.0       # on the compute stream (communication that blocks it included)
    backward_s: float = 0.0
    compute_s: float = 0.0       # forward + backward + recompute, or the host launch time when that is longer
    recompute_s: float = 0.0
    exposed: dict = field(default_factory=dict)      # exposed communication by kind
    overlapped: dict = field(default_factory=dict)   # hidden communication by kind
    slowdown_s: float = 0.0


def _accumulate(into: dict, seconds_by_kind: dict) -> None:
    """Add seconds per communication kind, dropping float dust."""
    for kind, seconds in seconds_by_kind.items():
        if seconds > 1e-12:
            into[kind] = into.get(kind, 0.0) + seconds


def _layer_comm(model, job, s: Strategy, cluster: ClusterSpec, cal: Calibration, moe_layer: bool,
                attention_fwd_s: float, attention_bwd_s: float):
    """(forward, backward) dicts kind -> (exposed_s, overlapped_s) for one layer and one micro-batch."""
    g = cluster.primary
    intra, inter = g.intra_node, g.inter_node
    overrides = node_links(cluster)
    tokens = s.micro_batch * job.seq_len // s.cp
    act_bytes = tokens * model.hidden * 2
    fwd: dict[str, tuple[float, float]] = {}
    bwd: dict[str, tuple[float, float]] = {}
    if s.tp > 1:
        tp_group = comm.group_of("tp", s, g.gpus_per_node, overrides)
        if s.sequence_parallel:
            one = (comm.collective_time("all_gather", act_bytes, tp_group, intra, inter, cal)
                   + comm.collective_time("reduce_scatter", act_bytes, tp_group, intra, inter, cal))
        else:
            one = comm.collective_time("all_reduce", act_bytes, tp_group, intra, inter, cal)
        per_pass = 2 * one                          # attention block and MLP block
        if s.recompute == "full":
            bwd_pass = 2 * per_pass                 # the recomputed forward communicates again
        else:
            bwd_pass = per_pass
        if s.tp_comm_overlap:                       # userbuffers pipeline: one chunk of tp stays exposed
            fwd["tp"] = (per_pass / s.tp, per_pass * (1 - 1 / s.tp))
            bwd["tp"] = (bwd_pass / s.tp, bwd_pass * (1 - 1 / s.tp))
        else:
            fwd["tp"] = (per_pass, 0.0)
            bwd["tp"] = (bwd_pass, 0.0)
    if s.cp > 1:
        cp_group = comm.group_of("cp", s, g.gpus_per_node, overrides)
        kv_bytes = 2 * tokens * (model.kv_dim // max(1, min(s.tp, model.kv_heads))) * 2
        ring = (s.cp - 1) * comm.p2p_time(kv_bytes, cp_group.crosses_nodes, intra, inter, cal, cap=cp_group.cap)
        fwd["cp"] = (max(0.0, ring - attention_fwd_s), min(ring, attention_fwd_s))
        ring_b = 2 * ring                            # K/V again plus their gradients
        bwd["cp"] = (max(0.0, ring_b - attention_bwd_s), min(ring_b, attention_bwd_s))
    if moe_layer and s.ep > 1:
        ep_group = comm.group_of("ep", s, g.gpus_per_node, overrides)
        # each rank dispatches its 1/tp share of the tokens when expert TP is 1; with expert TP = TP the TP group
        # dispatches all of them and each rank sends what its shard of every expert needs (same bytes per rank)
        a2a_bytes = tokens * model.moe.top_k * model.hidden * 2 / (s.tp // s.expert_tp)
        one = comm.collective_time("all_to_all", a2a_bytes, ep_group, intra, inter, cal)
        fwd["ep"] = (2 * one, 0.0)                   # dispatch + combine
        bwd["ep"] = ((4 if s.recompute == "full" else 2) * one, 0.0)
    return fwd, bwd


@dataclass
class _PassCost:
    """One pass (forward or backward incl. recompute) of one layer for one micro-batch."""
    time_s: float
    compute_s: float
    exposed: dict
    overlapped: dict
    slowdown_s: float


def _pass_cost(host_s: float, gpu_s: float, comms: dict, cal: Calibration) -> _PassCost:
    """The GPU stream runs the compute kernels, the exposed communication and the slowdown of overlapped
    communication; the host launches them. A pass takes the longer of the two, so communication that fits in a
    launch-bound pass is hidden (counted as overlapped)."""
    slowdown = sum(ovl for _, ovl in comms.values()) * cal.overlap_slowdown
    exposed_total = sum(exp for exp, _ in comms.values())
    compute_s = max(host_s, gpu_s)
    time_s = max(host_s, gpu_s + exposed_total + slowdown)
    extra = exposed_total + slowdown
    share = (time_s - compute_s) / extra if extra > 0 else 0.0
    return _PassCost(time_s, compute_s,
                     {k: exp * share for k, (exp, _) in comms.items() if exp},
                     {k: ovl + exp * (1 - share) for k, (exp, ovl) in comms.items() if ovl or exp * (1 - share)},
                     slowdown * share)


def layer_passes(model, job, s: Strategy, cluster, cal, layer_index: int,
                 cache: dict | None = None) -> tuple[_PassCost, _PassCost, float]:
    """(forward, backward, recompute GPU seconds) of one layer for one micro-batch on one GPU. `cache`: as
    estimate's layer_cache (the operators' times are shared by every recompute mode and ZeRO stage)."""
    gpu = cluster.gpu
    g = cluster.primary
    moe_layer = model.is_moe_layer(layer_index)
    times_key = ("times", s.tp, s.cp, s.micro_batch, s.sequence_parallel, s.ep, s.expert_tp, moe_layer)
    if cache is None or times_key not in cache:
        lt = compute.layer_times(model, job, s, gpu, cal, moe_layer)
        if cache is not None:
            cache[times_key] = lt
    else:
        lt = cache[times_key]
    lc = lt.compute
    rc_gpu, rc_host = lt.recompute_gpu_s[s.recompute], lt.recompute_host_s[s.recompute]
    attn_f, attn_b = lt.attention_forward_s, lt.attention_backward_s
    comm_f, comm_b = _layer_comm(model, job, s, cluster, cal, moe_layer, attn_f, attn_b)
    bwd_gpu, bwd_host = lc.gpu_backward_s + rc_gpu, lc.host_backward_s + rc_host
    if s.dp * s.cp > 1 and reduces_in_backward(s.zero, job.framework):
        # FSDP/ZeRO-3: gather this layer's parameters in forward and again in backward, prefetched one layer
        # ahead; reduce-scatter its gradients after its backward. ZeRO-2 that keeps only its gradient shard
        # reduce-scatters the same way in every micro-batch, without the gathers. Exposed where the layer is shorter.
        dp_group = comm.gradient_group(s, g.gpus_per_node, overrides=node_links(cluster))
        layer_params = sum(memory.layer_params_on_gpu(model, s, layer_index))
        gather = (comm.collective_time("all_gather", layer_params * 2, dp_group, g.intra_node, g.inter_node, cal)
                  if s.zero == 3 else 0.0)
        scatter = comm.collective_time("reduce_scatter", layer_params * grad_reduce_bytes_per_param(job.framework, job.precision),
                                       dp_group, g.intra_node, g.inter_node, cal)
        f_exp = max(0.0, gather - lc.forward_s)
        b_exp = max(0.0, gather + scatter - max(bwd_gpu, bwd_host))
        if gather:
            comm_f["zero"] = (f_exp, gather - f_exp)
        comm_b["zero"] = (b_exp, gather + scatter - b_exp)
    return (_pass_cost(lc.host_forward_s, lc.gpu_forward_s, comm_f, cal),
            _pass_cost(bwd_host, bwd_gpu, comm_b, cal), rc_gpu)


def layer_cache_key(s: Strategy, moe_layer: bool, node_overrides: bool = False) -> tuple:
    """What one layer's passes depend on, for a fixed model, job, cluster and calibration: everything in the
    strategy except how layers are spread over pipeline stages and ZeRO below stage 3 (which act outside layers).
    With node overrides the job's size (dp, pp) decides which nodes its groups land on, so it counts too."""
    if node_overrides:
        return (s.pp, s.dp, *layer_cache_key(s, moe_layer))
    dp = s.dp if (s.zero >= 2 or s.ep > 1) else 0      # dp places only ZeRO-2/3 collectives and expert groups
    return (s.tp, s.cp, dp, s.ep, s.micro_batch, s.sequence_parallel, s.recompute, max(s.zero, 1), s.tp_comm_overlap,
            moe_layer)


def _stage_costs(model, job, s: Strategy, cluster, cal, layers_by_chunk: list[list[int]],
                 cache: dict | None = None) -> list[_StageCost]:
    cache = {} if cache is None else cache     # a layer's cost depends only on whether it is an MoE layer
    costs = []
    for layers in layers_by_chunk:
        sc = _StageCost()
        counts: dict[bool, int] = {}
        for li in layers:
            moe_layer = model.is_moe_layer(li)
            counts[moe_layer] = counts.get(moe_layer, 0) + 1
        for moe_layer, n in counts.items():
            key = layer_cache_key(s, moe_layer, bool(node_links(cluster)))
            if key not in cache:
                first = next(li for li in layers if model.is_moe_layer(li) == moe_layer)
                cache[key] = layer_passes(model, job, s, cluster, cal, first, cache)
            fwd, bwd, recompute_s = cache[key]
            sc.forward_s += n * fwd.time_s
            sc.backward_s += n * bwd.time_s
            sc.compute_s += n * (fwd.compute_s + bwd.compute_s)
            sc.recompute_s += n * recompute_s
            sc.slowdown_s += n * (fwd.slowdown_s + bwd.slowdown_s)
            for p in (fwd, bwd):
                _accumulate(sc.exposed, {k: n * v for k, v in p.exposed.items()})
                _accumulate(sc.overlapped, {k: n * v for k, v in p.overlapped.items()})
        costs.append(sc)
    return costs


@dataclass
class Prepared:
    """Everything of one iteration's estimate that comes before the pipeline simulation; index r is the pipeline
    rank. The search bounds a candidate's time from this alone (time_lower_bound) before simulating it."""
    strategy: Strategy
    calibration: Calibration
    assumptions: list
    m: int                          # micro-batches per pipeline
    schedule: str
    forward_s: list                 # [rank][chunk] one micro-batch, on the compute stream
    backward_s: list
    compute_per_mb: list
    recompute_per_mb: list
    exposed_by_rank: list
    overlapped_by_rank: list
    slowdown_by_rank: list
    p2p_s: float
    p2p_overlapped: bool
    dp_exposed: list                # gradient reduction left after the last backward
    dp_overlapped: list
    optimizer_s: list


def prepare(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, strategy: Strategy,
            calibration: Calibration | None = None, assumptions: list[str] | None = None,
            layer_cache: dict | None = None) -> Prepared:
    """Stage costs, pipeline send time and the data-parallel/optimizer tail of `strategy` (checked first)."""
    check(strategy, model, cluster, job)
    s = strategy
    assumptions = list(assumptions or [])
    if s.layers_per_stage is None and model.layers % (s.pp * s.vpp):
        assumptions.append(f"uneven pipeline split {default_layer_split(model.layers, s.pp * s.vpp)} "
                           "(embedding and loss counted as layers, as Megatron's account-for options do)")
    gpu = cluster.gpu
    g = cluster.primary
    cal = calibration or calibration_for(gpu.name, job.framework)
    m = s.num_microbatches(job.global_batch)
    if m > MAX_MICROBATCHES:
        raise ParaplanError(f"global batch {job.global_batch} gives {m} micro-batches per pipeline (dp={s.dp}, "
                            f"micro_batch={s.micro_batch}); at most {MAX_MICROBATCHES} are simulated")
    schedule = "interleaved" if s.vpp > 1 else ("gpipe" if s.schedule == "gpipe" else "1f1b")

    # entry r*vpp + c: the layers of chunk c on pipeline rank r (virtual stage r + c*pp)
    per_chunk = _stage_costs(model, job, s, cluster, cal, memory.stage_layers(model, s), layer_cache)

    emb_f, emb_b = compute.embedding_time(model, job, s, gpu, cal)
    head_f, head_b = compute.head_time(model, job, s, gpu, cal)
    fwd = [[0.0] * s.vpp for _ in range(s.pp)]
    bwd = [[0.0] * s.vpp for _ in range(s.pp)]
    compute_per_mb = [0.0] * s.pp
    recompute_per_mb = [0.0] * s.pp
    exposed_by_rank = [dict() for _ in range(s.pp)]
    overlapped_by_rank = [dict() for _ in range(s.pp)]
    slowdown_by_rank = [0.0] * s.pp
    for r in range(s.pp):
        for c in range(s.vpp):
            sc = per_chunk[r * s.vpp + c]
            fwd[r][c] = sc.forward_s + cal.microbatch_overhead_s / s.vpp
            bwd[r][c] = sc.backward_s
            compute_per_mb[r] += sc.compute_s
            recompute_per_mb[r] += sc.recompute_s
            slowdown_by_rank[r] += sc.slowdown_s
            _accumulate(exposed_by_rank[r], sc.exposed)
            _accumulate(overlapped_by_rank[r], sc.overlapped)
    fwd[0][0] += emb_f
    bwd[0][0] += emb_b
    fwd[-1][-1] += head_f
    bwd[-1][-1] += head_b
    compute_per_mb[0] += emb_f + emb_b
    compute_per_mb[-1] += head_f + head_b

    p2p_bytes = s.micro_batch * job.seq_len // s.cp * model.hidden * 2 / (s.tp if s.sequence_parallel else 1)
    overrides = node_links(cluster)
    share, cap = comm.pp_send(s, g.gpus_per_node, g.inter_node, overrides)
    p2p = comm.p2p_time(p2p_bytes, comm.pp_crosses_nodes(s, g.gpus_per_node), g.intra_node, g.inter_node, cal, share,
                        cap) if s.pp > 1 else 0.0
    # Megatron's 1F1B waits for each send/recv pair before the next compute (send_forward_recv_backward); only the
    # interleaved schedule overlaps p2p with compute (--overlap-p2p-comm)
    overlapped_p2p = s.vpp > 1 or job.framework not in MEGATRON_FAMILY

    # ---- data-parallel gradient reduction and the optimizer step, after each rank's last backward -----------------
    dp_group = comm.gradient_group(s, g.gpus_per_node, overrides=overrides)
    expert_dp_group = comm.gradient_group(s, g.gpus_per_node, experts=True, overrides=overrides)
    grad_bytes = grad_reduce_bytes_per_param(job.framework, job.precision)
    dp_exposed = [0.0] * s.pp
    dp_overlapped = [0.0] * s.pp
    optimizer_s = [0.0] * s.pp
    for r, (dense_params, expert_params) in enumerate(_params_by_rank(model, s, layer_cache)):
        params = dense_params + expert_params
        if dp_group.size > 1 and s.zero < 3:
            t_grad = t_param = 0.0
            for group, count in ((dp_group, dense_params), (expert_dp_group, expert_params)):
                if s.zero == 0:
                    t_grad += comm.collective_time("all_reduce", count * grad_bytes, group, g.intra_node, g.inter_node, cal)
                else:
                    if not reduces_in_backward(s.zero, job.framework):   # else in each backward
                        t_grad += comm.collective_time("reduce_scatter", count * grad_bytes, group, g.intra_node,
                                                       g.inter_node, cal)
                    t_param += comm.collective_time("all_gather", count * 2, group, g.intra_node, g.inter_node, cal)
            if s.overlap_grad_reduce:
                window = sum(bwd[r])                    # the last micro-batch's backward over this rank's chunks
                buckets = max(1.0, params / max(MEGATRON_BUCKET_PARAMS, 1_000_000 * s.dp))
                tail = t_grad / buckets                 # the last bucket cannot overlap
                exposed = max(tail, t_grad - window)
            else:
                exposed = t_grad
            if t_param:
                # distributed optimizer: the next step's parameter all-gather is prefetched one bucket ahead of the
                # forward (Megatron DDP's forward pre-hook waits on its bucket and dispatches the next one), so it
                # hides behind one micro-batch's forward over this rank's layers; the first bucket and what outlasts
                # that forward stay exposed
                if s.overlap_param_gather:
                    exposed += max(t_param / max(1.0, params / MEGATRON_BUCKET_PARAMS), t_param - sum(fwd[r]))
                else:
                    exposed += t_param
            dp_exposed[r] = exposed
            dp_overlapped[r] = t_grad + t_param - exposed
        shard = (dense_params / dp_group.size + expert_params / expert_dp_group.size) if s.zero >= 1 else params
        optimizer_s[r] = float(compute.optimizer_time(shard, gpu, cal))
    # say so where the topology made another algorithm faster (only a cluster that declares several links per level
    # or node overrides offers one: comm.collective_choice)
    detailed = bool(g.intra_node.parts or g.inter_node.parts or dp_group.detailed_topology)
    if detailed and dp_group.size > 1 and s.zero < 3:
        op = "all_reduce" if s.zero == 0 else "reduce_scatter"
        dense_params = _params_by_rank(model, s, layer_cache)[0][0]
        _, algorithm = comm.collective_choice(op, dense_params * grad_bytes, dp_group, g.intra_node, g.inter_node, cal)
        if algorithm not in ("ring", "none", "measured"):
            assumptions.append(f"data-parallel gradient {op.replace('_', '-')}: {algorithm} algorithm (the fastest "
                               f"priced for this topology)")
    return Prepared(s, cal, assumptions, m, schedule, fwd, bwd, compute_per_mb, recompute_per_mb, exposed_by_rank,
                    overlapped_by_rank, slowdown_by_rank, p2p, overlapped_p2p, dp_exposed, dp_overlapped, optimizer_s)


def _params_by_rank(model, s: Strategy, cache: dict | None):
    if cache is None:
        return memory.params_by_rank(model, s)
    key = ("params", s.tp, s.pp, s.vpp, s.ep, s.expert_tp, s.layers_per_stage)
    if key not in cache:
        cache[key] = memory.params_by_rank(model, s)
    return cache[key]


def time_lower_bound(p: Prepared) -> float:
    """At most the iteration time the simulation of `p` gives (see search/bounds.py for the argument): rank r
    starts after micro-batch 0's forward reaches it, works m micro-batches back to back at best, and its last
    backward is followed by that micro-batch's backward on the ranks before it; each rank then reduces gradients
    and steps its optimizer."""
    pp, m, hop = p.strategy.pp, p.m, p.p2p_s
    ranks_alone = chain_to_rank0 = 0.0
    forward_prefix = backward_prefix = 0.0        # sums over the ranks before r of their first chunk's passes
    for r in range(pp):
        start = forward_prefix + r * hop
        work_done = start + m * (sum(p.forward_s[r]) + sum(p.backward_s[r]))
        ranks_alone = max(ranks_alone, work_done + p.dp_exposed[r] + p.optimizer_s[r])
        chain_to_rank0 = max(chain_to_rank0, work_done + backward_prefix + r * hop)
        forward_prefix += p.forward_s[r][0]
        backward_prefix += p.backward_s[r][0]
    end = max(ranks_alone, chain_to_rank0 + p.dp_exposed[0] + p.optimizer_s[0])
    return end + p.calibration.iteration_overhead_s


def estimate(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, strategy: Strategy,
             calibration: Calibration | None = None, assumptions: list[str] | None = None,
             record_events: bool = False, layer_cache: dict | None = None) -> Plan:
    """Predict one training iteration of `strategy`. Raises ParaplanError when the strategy is invalid.
    With `record_events` the Plan carries a Timeline of the simulated iteration (for traces and reports).
    `layer_cache`: a dict shared by calls with the same model, job, cluster and calibration (the search) so that
    layers are costed once per distinct `layer_cache_key`."""
    prep = prepare(model, cluster, job, strategy, calibration, assumptions, layer_cache)
    return finish(model, cluster, job, prep, record_events)


def _group_size(s: Strategy) -> int | None:
    """The interleaved schedule's micro-batch group size, only where it applies (the simulator refuses it else)."""
    return s.microbatch_group_size if s.vpp > 1 and s.pp > 1 else None


def memory_of(model: ModelSpec, job: JobSpec, prep: Prepared, gpu) -> MemoryBreakdown:
    """Peak memory per GPU of a prepared estimate: it needs the schedule's in-flight micro-batches, not its times."""
    s = prep.strategy
    return memory.memory_per_gpu(model, job, s, gpu,
                                 inflight_microbatches=peak_inflight(prep.schedule, s.pp, s.vpp, prep.m,
                                                                     _group_size(s)))


def finish(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, prep: Prepared, record_events: bool = False,
           mem: MemoryBreakdown | None = None) -> Plan:
    """Simulate the pipeline of a prepared estimate and assemble the Plan (`mem`: memory_of(), if already known)."""
    p, s, cal, m, schedule = prep, prep.strategy, prep.calibration, prep.m, prep.schedule
    fwd, bwd, p2p, overlapped_p2p = p.forward_s, p.backward_s, p.p2p_s, p.p2p_overlapped
    dp_exposed, dp_overlapped, optimizer_s = p.dp_exposed, p.dp_overlapped, p.optimizer_s
    exposed_by_rank, overlapped_by_rank = p.exposed_by_rank, p.overlapped_by_rank
    gpu = cluster.gpu
    pipe = simulate_pipeline(schedule, s.pp, s.vpp, m, PipelineCosts(fwd, bwd, p2p, p2p_overlapped=overlapped_p2p),
                             record_events=record_events, microbatch_group_size=_group_size(s))
    finish_s = [pipe.last_backward_end_s[r] + dp_exposed[r] + optimizer_s[r] for r in range(s.pp)]
    critical = max(range(s.pp), key=lambda r: finish_s[r])
    iteration = finish_s[critical] + cal.iteration_overhead_s

    # ---- breakdown on the critical rank ------------------------------------------------------------------------------
    exposed = {k: v * m for k, v in exposed_by_rank[critical].items()}
    pp_exposed = 0.0
    if p2p > 0:
        # what the sends and receives add to the critical rank: the same schedule simulated without them
        no_p2p = simulate_pipeline(schedule, s.pp, s.vpp, m, PipelineCosts(fwd, bwd, 0.0), record_events=False,
                                   microbatch_group_size=_group_size(s))
        pp_exposed = max(0.0, pipe.last_backward_end_s[critical] - no_p2p.last_backward_end_s[critical])
        exposed["pp"] = pp_exposed
    if dp_exposed[critical]:
        exposed["dp"] = dp_exposed[critical]
    overlapped = {k: v * m for k, v in overlapped_by_rank[critical].items()}
    if dp_overlapped[critical]:
        overlapped["dp"] = dp_overlapped[critical]
    compute_s = p.compute_per_mb[critical] * m
    slowdown = p.slowdown_by_rank[critical] * m
    busy = pipe.busy_s[critical]
    bubble = pipe.last_backward_end_s[critical] - busy - pp_exposed
    overhead = cal.iteration_overhead_s + cal.microbatch_overhead_s * m
    # compute_s + exposed comm + slowdown + overhead(per micro-batch) == busy, up to float rounding
    breakdown = TimeBreakdown(compute_s=compute_s, recompute_s=p.recompute_per_mb[critical] * m,
                              exposed_comm_s=exposed, overlapped_comm_s=overlapped, overlap_slowdown_s=slowdown,
                              bubble_s=bubble, optimizer_s=optimizer_s[critical], overhead_s=overhead)

    if mem is None:
        mem = memory.memory_per_gpu(model, job, s, gpu, inflight_microbatches=pipe.peak_inflight_microbatches)
    flops = compute.model_flops_per_iteration(model, job)
    tflops = flops / iteration / cluster.num_gpus / 1e12
    timeline = Timeline(pipe, fwd, bwd, p2p, overlapped_p2p, dp_exposed, dp_overlapped, optimizer_s,
                        cal.iteration_overhead_s) if record_events else None
    return Plan(strategy=s, iteration_time_s=iteration, time=breakdown, memory=mem,
                tokens_per_s=job.tokens_per_step / iteration, model_tflops_per_gpu=tflops,
                mfu=tflops / gpu.peak("bf16"), flop_formula=compute.FLOP_FORMULA, assumptions=p.assumptions,
                timeline=timeline)


