"""One iteration of one strategy: per-stage costs -> pipeline simulation -> DP/optimizer tail -> Plan.

The same function serves `paraplan estimate`, validation against measured runs and the search's final ranking.
"""
from __future__ import annotations

from dataclasses import dataclass

from paraplan.cost import comm, compute, memory
from paraplan.cost.calibration import Calibration, calibration_for
from paraplan.frameworks import grad_reduce_bytes_per_param
from paraplan.sim.engine import PipelineCosts, simulate_pipeline
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Plan, Strategy
from paraplan.specs.plan import TimeBreakdown
from paraplan.specs.strategy import check

MEGATRON_BUCKET_PARAMS = 40_000_000   # Megatron DDP bucket: max(40M, 1M * dp) parameters (distributed.py)



@dataclass
class _StageCost:
    forward_s: float = 0.0       # per micro-batch, on the compute stream (comm that blocks it included)
    backward_s: float = 0.0
    compute_s: float = 0.0       # pure compute per micro-batch (forward + backward + recompute)
    recompute_s: float = 0.0
    exposed: dict = None         # per micro-batch exposed comm by kind
    overlapped: dict = None
    slowdown_s: float = 0.0

    def __post_init__(self):
        self.exposed = self.exposed or {}
        self.overlapped = self.overlapped or {}

    def add(self, bucket: dict, kind: str, seconds: float):
        if seconds > 0:
            bucket[kind] = bucket.get(kind, 0.0) + seconds


def _layer_comm(model, job, s: Strategy, cluster: ClusterSpec, cal: Calibration, moe_layer: bool,
                attention_fwd_s: float, attention_bwd_s: float):
    """(forward, backward) dicts kind -> (exposed_s, overlapped_s) for one layer and one micro-batch."""
    g = cluster.primary
    intra, inter = g.intra_node, g.inter_node
    tokens = s.micro_batch * job.seq_len // s.cp
    act_bytes = tokens * model.hidden * 2
    fwd: dict[str, tuple[float, float]] = {}
    bwd: dict[str, tuple[float, float]] = {}
    if s.tp > 1:
        tp_group = comm.group_of("tp", s, g.gpus_per_node)
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
        cp_group = comm.group_of("cp", s, g.gpus_per_node)
        kv_bytes = 2 * tokens * (model.kv_dim // max(1, min(s.tp, model.kv_heads))) * 2
        ring = (s.cp - 1) * comm.p2p_time(kv_bytes, cp_group.crosses_nodes, intra, inter, cal)
        fwd["cp"] = (max(0.0, ring - attention_fwd_s), min(ring, attention_fwd_s))
        ring_b = 2 * ring                            # K/V again plus their gradients
        bwd["cp"] = (max(0.0, ring_b - attention_bwd_s), min(ring_b, attention_bwd_s))
    if moe_layer and s.ep > 1:
        ep_group = comm.group_of("ep", s, g.gpus_per_node)
        a2a_bytes = tokens * model.moe.top_k * model.hidden * 2
        one = comm.collective_time("all_to_all", a2a_bytes, ep_group, intra, inter, cal)
        fwd["ep"] = (2 * one, 0.0)                   # dispatch + combine
        bwd["ep"] = ((4 if s.recompute == "full" else 2) * one, 0.0)
    return fwd, bwd


def _stage_costs(model, job, s: Strategy, cluster, cal, layers_by_chunk: list[list[int]]) -> list[_StageCost]:
    gpu = cluster.gpu
    cache: dict[bool, tuple] = {}

    def per_layer(moe_layer: bool):
        if moe_layer not in cache:
            lc = compute.layer_compute(model, job, s, gpu, cal, moe_layer)
            rc = compute.recompute_time(model, job, s, gpu, cal, moe_layer)
            attn_ops = [op for op in compute.layer_ops(model, job, s, moe_layer)
                        if op.name in ("flash_attention", "attn_scores", "attn_context")]
            attn_f = sum(compute.op_time(op, gpu, cal, job.precision, False) for op in attn_ops)
            attn_b = sum(compute.op_time(op, gpu, cal, job.precision, True) for op in attn_ops)
            cache[moe_layer] = (lc, rc, _layer_comm(model, job, s, cluster, cal, moe_layer, attn_f, attn_b))
        return cache[moe_layer]

    zero3_layer_gather = s.zero == 3 and s.dp * s.cp > 1
    dp_group = comm.place(s.dp * s.cp, s.tp, cluster.gpus_per_node)
    g = cluster.primary
    costs = []
    for index, layers in enumerate(layers_by_chunk):
        sc = _StageCost()
        for li in layers:
            moe_layer = model.is_moe_layer(li)
            lc, rc, (cf, cb) = per_layer(moe_layer)
            sc.forward_s += lc.forward_s
            sc.backward_s += lc.backward_s + rc
            sc.compute_s += lc.forward_s + lc.backward_s + rc
            sc.recompute_s += rc
            for kind, (exp, ovl) in cf.items():
                sc.forward_s += exp + ovl * cal.overlap_slowdown
                sc.add(sc.exposed, kind, exp)
                sc.add(sc.overlapped, kind, ovl)
                sc.slowdown_s += ovl * cal.overlap_slowdown
            for kind, (exp, ovl) in cb.items():
                sc.backward_s += exp + ovl * cal.overlap_slowdown
                sc.add(sc.exposed, kind, exp)
                sc.add(sc.overlapped, kind, ovl)
                sc.slowdown_s += ovl * cal.overlap_slowdown
            if zero3_layer_gather:
                # FSDP/ZeRO-3: gather this layer's parameters in forward and again in backward, prefetched one layer
                # ahead; reduce-scatter its gradients after its backward. Exposed where the layer is shorter.
                layer_params = sum(memory.layer_params_on_gpu(model, s, li))
                gather = comm.collective_time("all_gather", layer_params * 2, dp_group, g.intra_node, g.inter_node, cal)
                scatter = comm.collective_time("reduce_scatter", layer_params * grad_reduce_bytes_per_param(job.framework),
                                               dp_group, g.intra_node, g.inter_node, cal)
                f_exp = max(0.0, gather - lc.forward_s)
                b_exp = max(0.0, gather + scatter - lc.backward_s - rc)
                hidden = (gather - f_exp) + (gather + scatter - b_exp)
                sc.forward_s += f_exp + (gather - f_exp) * cal.overlap_slowdown
                sc.backward_s += b_exp + (gather + scatter - b_exp) * cal.overlap_slowdown
                sc.add(sc.exposed, "zero", f_exp + b_exp)
                sc.add(sc.overlapped, "zero", hidden)
                sc.slowdown_s += hidden * cal.overlap_slowdown
        costs.append(sc)
    return costs


def estimate(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, strategy: Strategy,
             calibration: Calibration | None = None, assumptions: list[str] | None = None) -> Plan:
    """Predict one training iteration of `strategy`. Raises ParaplanError when the strategy is invalid."""
    check(strategy, model, cluster, job)
    s = strategy
    gpu = cluster.gpu
    g = cluster.primary
    cal = calibration or calibration_for(gpu.name, job.framework)
    m = job.global_batch // (s.dp * s.micro_batch)         # micro-batches per iteration per pipeline
    schedule = "interleaved" if s.vpp > 1 else ("gpipe" if s.schedule == "gpipe" else "1f1b")

    # entry r*vpp + c: the layers of chunk c on pipeline rank r (virtual stage r + c*pp)
    per_chunk = _stage_costs(model, job, s, cluster, cal, memory.stage_layers(model, s))

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
            for kind, v in sc.exposed.items():
                exposed_by_rank[r][kind] = exposed_by_rank[r].get(kind, 0.0) + v
            for kind, v in sc.overlapped.items():
                overlapped_by_rank[r][kind] = overlapped_by_rank[r].get(kind, 0.0) + v
    fwd[0][0] += emb_f
    bwd[0][0] += emb_b
    fwd[-1][-1] += head_f
    bwd[-1][-1] += head_b
    compute_per_mb[0] += emb_f + emb_b
    compute_per_mb[-1] += head_f + head_b

    p2p_bytes = s.micro_batch * job.seq_len // s.cp * model.hidden * 2 / (s.tp if s.sequence_parallel else 1)
    p2p = comm.p2p_time(p2p_bytes, comm.pp_crosses_nodes(s, g.gpus_per_node), g.intra_node, g.inter_node, cal) if s.pp > 1 else 0.0
    pipe = simulate_pipeline(schedule, s.pp, s.vpp, m, PipelineCosts(fwd, bwd, p2p), record_events=False)

    # ---- data-parallel gradient reduction and the optimizer step, after each rank's last backward -----------------
    dp_group = comm.place(s.dp * s.cp, s.tp, g.gpus_per_node)
    expert_dp_group = comm.place(s.dp * s.cp // s.ep, s.tp * s.ep, g.gpus_per_node)
    grad_bytes = grad_reduce_bytes_per_param(job.framework)
    finish = []
    dp_exposed = [0.0] * s.pp
    dp_overlapped = [0.0] * s.pp
    optimizer_s = [0.0] * s.pp
    for r, (dense_params, expert_params) in enumerate(memory.params_by_rank(model, s)):
        params = dense_params + expert_params
        if dp_group.size > 1 and s.zero < 3:
            t_grad = t_param = 0.0
            for group, count in ((dp_group, dense_params), (expert_dp_group, expert_params)):
                if s.zero == 0:
                    t_grad += comm.collective_time("all_reduce", count * grad_bytes, group, g.intra_node, g.inter_node, cal)
                else:
                    t_grad += comm.collective_time("reduce_scatter", count * grad_bytes, group, g.intra_node, g.inter_node, cal)
                    t_param += comm.collective_time("all_gather", count * 2, group, g.intra_node, g.inter_node, cal)
            if s.overlap_grad_reduce:
                window = sum(bwd[r])                    # the last micro-batch's backward over this rank's chunks
                buckets = max(1.0, params / max(MEGATRON_BUCKET_PARAMS, 1_000_000 * s.dp))
                tail = t_grad / buckets                 # the last bucket cannot overlap
                exposed = max(tail, t_grad - window)
            else:
                exposed = t_grad
            if t_param:
                # distributed optimizer: the parameter all-gather hides behind the next forward when overlapped
                exposed += (t_param / max(1.0, params / MEGATRON_BUCKET_PARAMS)) if s.overlap_param_gather else t_param
            dp_exposed[r] = exposed
            dp_overlapped[r] = t_grad + t_param - exposed
        shard = (dense_params / dp_group.size + expert_params / expert_dp_group.size) if s.zero >= 1 else params
        optimizer_s[r] = compute.optimizer_time(shard, gpu, cal)
        finish.append(pipe.last_backward_end_s[r] + dp_exposed[r] + optimizer_s[r])
    critical = max(range(s.pp), key=lambda r: finish[r])
    iteration = finish[critical] + cal.iteration_overhead_s

    # ---- breakdown on the critical rank ------------------------------------------------------------------------------
    exposed = {k: v * m for k, v in exposed_by_rank[critical].items()}
    if s.pp > 1:
        exposed["pp"] = 0.0   # p2p runs on its own stream; its waits show up as bubble
    if dp_exposed[critical]:
        exposed["dp"] = dp_exposed[critical]
    overlapped = {k: v * m for k, v in overlapped_by_rank[critical].items()}
    if dp_overlapped[critical]:
        overlapped["dp"] = dp_overlapped[critical]
    compute_s = compute_per_mb[critical] * m
    slowdown = slowdown_by_rank[critical] * m
    busy = pipe.busy_s[critical]
    bubble = pipe.last_backward_end_s[critical] - busy
    overhead = cal.iteration_overhead_s + cal.microbatch_overhead_s * m
    # compute_s + exposed comm + slowdown + overhead(per micro-batch) == busy, up to float rounding
    breakdown = TimeBreakdown(compute_s=compute_s, recompute_s=recompute_per_mb[critical] * m,
                              exposed_comm_s=exposed, overlapped_comm_s=overlapped, overlap_slowdown_s=slowdown,
                              bubble_s=bubble, optimizer_s=optimizer_s[critical], overhead_s=overhead)

    mem = memory.memory_per_gpu(model, job, s, gpu, inflight_microbatches=pipe.peak_inflight_microbatches)
    flops = compute.model_flops_per_iteration(model, job)
    tflops = flops / iteration / cluster.num_gpus / 1e12
    return Plan(strategy=s, iteration_time_s=iteration, time=breakdown, memory=mem,
                tokens_per_s=job.tokens_per_step / iteration, model_tflops_per_gpu=tflops,
                mfu=tflops / gpu.peak("bf16"), flop_formula=compute.FLOP_FORMULA, assumptions=list(assumptions or []))


