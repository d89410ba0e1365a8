"""Per-GPU memory: weights, gradients, optimizer state, stored activations, transients and overheads.

Sources (docs/reference/perf_models.md 3.4-3.5): Korthikanti et al. 2022 (arXiv 2205.05198) Table 2 for
activations; Megatron-LM megatron/training/theoretical_memory_usage.py for the weight/optimizer bytes, the
edge-stage extras and the in-flight micro-batch counts; the ZeRO paper for stage-by-stage sharding; torchtitan
(parallelize.py op-level SAC policy, train.py loss) for its conventions. Per-framework constants live in
paraplan/frameworks.py.

Activation bytes per token of one transformer layer (no recompute), h hidden, q = heads*head_dim, kv = kv width,
f = ffn, a = heads, t = tp, t_sp = t with sequence parallelism else 1 (Korthikanti's "replicated" parts):
  attention  LN1 input 2h/t_sp + QKV-GEMM input 2h/t_sp + Q 2q/t + K 2kv/t_kv + V 2kv/t_kv + out-proj input 2q/t
             + [dropout: mask h/t_sp] + [no flash: softmax output 2as/t (+ dropout mask as + dropout output 2as)]
             + [flash: fp32 log-sum-exp 4a/t]
  MLP        LN2 input 2h/t_sp + fc1 input 2h/t_sp + intermediates/t + [dropout: mask h/t_sp]
             intermediates: GeLU 4f (fc1 output 2f + GeLU output 2f; = 16h at f = 4h, Korthikanti's 8+8);
             SwiGLU fused (Megatron bias_swiglu: stores [gate, up] 4f and the product 2f) = 6f;
             SwiGLU unfused (eager PyTorch: w1 out, silu(w1 out), w3 out, product) 8f.
  With MHA, GeLU, f = 4h, dropout and no flash this is Korthikanti's s*b*h*(34 + 5as/h) (t = 1): 11h + 5as
  (attention) + 19h (MLP) + 4h (norms). t_kv = min(t, kv_heads): K/V heads are replicated when t > kv_heads.
MoE layer (state the formula): the MLP is replaced by router fp32 logits + probabilities 8E/t_sp, plus per routed
  copy (top_k per token) the dispatched input 2h and the expert output 2h (Megatron all-gathers tokens over the
  expert-TP group, so these are not divided by t) and the expert intermediates/t (expert-TP = tp), plus each
  shared expert's intermediates/t. Tokens per expert are assumed balanced (dropless, force-balanced routing).
CP divides the tokens (s/cp per GPU); the score term uses the local key length s/cp as well.
fp8 with Transformer Engine (Megatron family, MemoryConventions.fp8_saves_gemm_inputs): each Linear keeps its input
  for the weight gradient as the fp8 cast (1 B), so the QKV and fc1 inputs (LayerNormLinear's fp8 ln_out), the fc2
  input (the activation output) and an expert's dispatched input cost 1 B per element instead of 2; the out-proj
  input adds its fp8 copy o/t to the bf16 attention output that FlashAttention keeps. Other engines count bf16.
torchtitan (MemoryConventions flags, frameworks.py): GEMM inputs all-gathered by DTensor SP->TP are saved full-
  sequence (QKV, fc1, LM head); repeat_kv makes saved K/V q-wide; FSDP fp8 all-gather keeps unsharded Float8Linear
  weights at 1 B; CP all-gathers K/V per layer; PP via torch.distributed.pipelining keeps the whole stage unsharded
  with fp32 accumulated grads, per-micro-batch receive buffers and every micro-batch's last-stage output.
"""
from __future__ import annotations

import numpy as np

from paraplan.frameworks import (MEGATRON_FAMILY, MemoryConventions, conventions_for, uses_flash_attention,
                                 zero2_grads_sharded)
from paraplan.errors import ParaplanError
from paraplan.specs.model import ModelSpec
from paraplan.specs.plan import MemoryBreakdown
from paraplan.specs.strategy import default_layer_split

GIB = 1024 ** 3


# ---- switches ------------------------------------------------------------------------------------------------
def _dropout(model: ModelSpec, framework: str, dropout: bool | None) -> bool:
    """GPT-style recipes (LayerNorm + biases) train with dropout 0.1 in Megatron-family engines; Llama-style
    recipes (RMSNorm, no bias) and torchtitan/MaxText use none. model.extra["dropout"] overrides."""
    if dropout is not None:
        return dropout
    if "dropout" in model.extra:
        return bool(model.extra["dropout"])
    return framework in MEGATRON_FAMILY and model.norm == "layernorm" and model.linear_bias


def _sp_div(strategy, conv: MemoryConventions) -> int:
    sp = strategy.sequence_parallel or conv.always_sp_with_tp
    return strategy.tp if sp else 1


def _widths(model: ModelSpec):
    """(q, k, v, attention-output) widths; MLA keys are q-wide and values heads*v_head_dim."""
    if model.mla:
        return model.q_dim, model.q_dim, model.kv_dim, model.kv_dim
    return model.q_dim, model.kv_dim, model.kv_dim, model.q_dim


def _kv_div(model: ModelSpec, tp: int) -> int:
    return tp if model.mla else min(tp, model.kv_heads)


def _intermediate(model: ModelSpec, ffn: int, conv: MemoryConventions, gemm_input: float = 2.0) -> float:
    """Bytes per token stored inside one MLP (or expert) of inner size ffn, before TP division; the last term is the
    fc2 input, kept at `gemm_input` bytes per element."""
    if not model.gated_mlp:
        return 2 * ffn + gemm_input * ffn   # GeLU input 2f + GeLU output 2f (Korthikanti: 8sbh + 8sbh at f = 4h)
    return (4 if conv.fused_swiglu else 6) * ffn + gemm_input * ffn


# ---- per-layer activations -----------------------------------------------------------------------------------
def _layer_parts(model, job, strategy, moe_layer, flash, dropout):
    """Bytes per token (on this GPU) of one layer with no recompute, split into
    (kept_by_megatron_selective, dropped_by_megatron_selective)."""
    conv = conventions_for(job.framework)
    h, a, t = model.hidden, model.heads, strategy.tp
    tsp, tkv = _sp_div(strategy, conv), _kv_div(model, t)
    q, k, v, o = _widths(model)
    if conv.repeat_kv and not model.mla:   # torchtitan repeat_kv: SDPA saves K and V expanded to all heads
        k = v = q
        tkv = t
    tgi = 1 if (conv.dtensor_tp_gathered_inputs and t > 1) else tsp    # column-parallel GEMM inputs
    s_keys = job.seq_len / strategy.cp
    mask = 1.0 if dropout else 0.0
    fp8_inputs = job.precision == "fp8" and conv.fp8_saves_gemm_inputs
    g = 1.0 if fp8_inputs else 2.0          # bytes per saved GEMM-input element
    attn = 2 * h / tsp + g * h / tgi + 2 * q / t + 2 * k / tkv + 2 * v / tkv + 2 * o / t + mask * h / tsp
    if fp8_inputs:
        attn += o / t                       # out-proj's fp8 input beside the bf16 output flash attention keeps
    if flash:
        core = 4 * a / t                    # FlashAttention keeps only the fp32 log-sum-exp (a per token)
    else:                                   # softmax output 2as (+ dropout mask as + dropout output 2as)
        core = (2 + 3 * mask) * a * s_keys / t
    mlp = 2 * h / tsp + mask * h / tsp
    if moe_layer and model.moe:
        me = model.moe
        mlp += 2 * h / tgi                  # the router's input (bf16) before dispatch
        mlp += 8 * me.num_experts / tsp     # router logits + probabilities in fp32
        mlp += me.top_k * ((g + 2) * h + _intermediate(model, me.expert_ffn, conv, g) / strategy.expert_tp)
        if me.shared_experts:
            mlp += me.shared_experts * _intermediate(model, me.shared_expert_ffn or me.expert_ffn, conv, g) / t
    else:
        mlp += g * h / tgi                  # fc1 input
        mlp += _intermediate(model, model.ffn, conv, g) / t
    return attn + mlp, core


def _torchtitan_op_sac(model, job, strategy, moe_layer) -> float:
    """torchtitan selective AC "op" (parallelize.py _custom_policy): the block input is saved by checkpoint, and
    of the ops in _save_list (mm, SDPA, reduce_scatter, max) the outputs are kept except every second mm.
    Per block the mms run wq, wk, wv, wo, w1, (w3,) w2: odd ones kept = wq, wv, w1, w2 (gated) or wq, wv, w1.
    SDPA keeps its output and the fp32 log-sum-exp. With TP the row-parallel w2 output is the unreduced partial
    (full h) and both reduce_scatter outputs (h/t) are saved. MoE: routed w1 outputs per copy (approximation)."""
    conv = conventions_for(job.framework)
    h, a, t = model.hidden, model.heads, strategy.tp
    tsp, tkv = _sp_div(strategy, conv), _kv_div(model, t)
    q, _, v, o = _widths(model)
    saved = 2 * h / tsp + 2 * q / t + 2 * v / tkv + 2 * o / t + 4 * a / t
    if moe_layer and model.moe:
        saved += model.moe.top_k * 2 * model.moe.expert_ffn / t + 8 * model.moe.num_experts / tsp
    else:
        saved += 2 * model.ffn / t
    if model.gated_mlp:
        saved += 2 * h                      # w2 output (partial sum when t > 1)
    if t > 1:
        saved += 2 * 2 * h / t              # reduce_scatter outputs after wo and w2
    return saved


def _per_token(model, job, strategy, moe_layer, flash, dropout):
    """(stored, recompute working set) bytes per token of one layer on this GPU."""
    conv = conventions_for(job.framework)
    kept, core = _layer_parts(model, job, strategy, moe_layer, flash, dropout)
    full_set = kept + core
    if strategy.recompute == "none":
        return full_set, 0.0
    if strategy.recompute == "full":        # only the layer input survives (Korthikanti: 2sbh, /t with SP)
        return 2 * model.hidden / _sp_div(strategy, conv), full_set
    if conv.selective_style == "torchtitan-op":
        saved = min(_torchtitan_op_sac(model, job, strategy, moe_layer), full_set)
        return saved, full_set - saved
    return kept, core                       # Megatron selective: recompute core attention only


def _tokens(job, strategy, micro_batch):
    return (micro_batch or strategy.micro_batch) * job.seq_len / strategy.cp


def activation_bytes_per_layer(model, job, strategy, micro_batch: int | None = None, moe_layer: bool = False,
                               flash_attention: bool | None = None, dropout: bool | None = None) -> float:
    """Stored activation bytes of one micro-batch for one transformer layer on one GPU, by recompute mode, tp,
    sp, cp and attention kernel (flash_attention None -> the framework default, frameworks.py)."""
    flash = uses_flash_attention(job) if flash_attention is None else flash_attention
    stored, _ = _per_token(model, job, strategy, moe_layer, flash, _dropout(model, job.framework, dropout))
    return stored * _tokens(job, strategy, micro_batch)


def recompute_working_set_bytes(model, job, strategy, micro_batch: int | None = None, moe_layer: bool = False,
                                flash_attention: bool | None = None, dropout: bool | None = None) -> float:
    """Transient bytes recomputed for one layer during its backward (0 without recompute)."""
    flash = uses_flash_attention(job) if flash_attention is None else flash_attention
    _, work = _per_token(model, job, strategy, moe_layer, flash, _dropout(model, job.framework, dropout))
    return work * _tokens(job, strategy, micro_batch)


# ---- pipeline layout -----------------------------------------------------------------------------------------
def stage_layers(model, strategy) -> list[list[int]]:
    """Layer indices of each pipeline chunk, rank-major: entry r*vpp + c holds virtual stage r + c*pp (so with
    vpp = 1 entry r is pipeline rank r). strategy.layers_per_stage gives an uneven split (one count per virtual
    stage, in pipeline order)."""
    pp, vpp, n = strategy.pp, strategy.vpp, model.layers
    if strategy.layers_per_stage is not None:
        counts = list(strategy.layers_per_stage)     # one entry per virtual stage, in pipeline order
        if len(counts) != pp * vpp or sum(counts) != n or min(counts) < 1:
            raise ParaplanError(f"layers_per_stage {tuple(counts)} must have pp*vpp={pp * vpp} positive entries "
                                f"summing to {n}")
    else:
        stages = pp * vpp
        if n < stages:
            raise ParaplanError(f"layers ({n}) must be at least pp*vpp ({stages})")
        counts = default_layer_split(n, stages)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    virtual = [list(range(starts[i], starts[i] + counts[i])) for i in range(len(counts))]
    return [virtual[r + c * pp] for r in range(pp) for c in range(vpp)]


def rank_layers(model, strategy) -> list[list[int]]:
    """All layer indices held by each pipeline rank (its vpp chunks concatenated)."""
    chunks = stage_layers(model, strategy)
    v = strategy.vpp
    return [[i for c in chunks[r * v:(r + 1) * v] for i in c] for r in range(strategy.pp)]


def num_microbatches(job, strategy) -> int:
    return max(1, strategy.num_microbatches(job.global_batch))


def closed_form_inflight(job, strategy) -> list[int]:
    """Peak micro-batch-chunks in flight per rank (perf_models.md 3.4; Megatron schedules.py warm-up counts).
    1F1B: min(pp - r, m). Interleaved: warm-up 2(pp-r-1) + (vpp-1)pp, +1 -> at r = 0 this is vpp*pp*(1 +
    (pp-1)/(pp*vpp)) chunks, Megatron's interleaving penalty; capped at m*vpp. GPipe: all m micro-batches."""
    pp, vpp, m = strategy.pp, strategy.vpp, num_microbatches(job, strategy)
    if strategy.schedule == "gpipe":
        return [m * vpp] * pp
    if vpp > 1:
        return [min(2 * (pp - r - 1) + (vpp - 1) * pp + 1, m * vpp) for r in range(pp)]
    return [min(pp - r, m) for r in range(pp)]


# ---- parameters ----------------------------------------------------------------------------------------------
def layer_params_on_gpu(model, strategy, i) -> tuple[float, float]:
    """(non-expert, expert) parameters of layer i on one GPU. Attention and dense MLP / tp (K/V replicated when
    tp > kv_heads); norms replicated (counted whole); router replicated; routed experts / (ep * expert-tp) with
    expert-tp = tp (Megatron's default expert_tensor_parallel_size); shared experts / tp."""
    t = strategy.tp
    attn = model.attention_params()
    if not model.mla and t > model.kv_heads:    # K, V projections replicated t / kv_heads times
        kv = 2 * model.hidden * model.kv_dim
        attn_local = (attn - kv) / t + kv / model.kv_heads
    else:
        attn_local = attn / t
    dense = attn_local + model.norm_params_per_layer()
    if model.is_moe_layer(i):
        router = model.hidden * model.moe.num_experts
        dense += (model.dense_mlp_params_per_moe_layer() - router) / t + router
        return dense, model.expert_params_per_layer() / (strategy.ep * strategy.expert_tp)
    return dense + model.mlp_params(model.ffn) / t, 0.0


def _params_by_kind(model, strategy) -> dict[bool, tuple[float, float]]:
    """layer_params_on_gpu of a dense and of an MoE layer (they differ only by kind)."""
    out = {}
    for i in range(model.layers):
        kind = model.is_moe_layer(i)
        if kind not in out:
            out[kind] = layer_params_on_gpu(model, strategy, i)
    return out


def params_by_rank(model, strategy) -> list[tuple[float, float]]:
    """(non-expert, expert) parameters held by each pipeline rank. Embedding on rank 0, final norm and LM head
    on the last rank (both / tp); tied embeddings keep a copy on the last stage when pp > 1 (Megatron)."""
    out = []
    layers = rank_layers(model, strategy)
    per_layer = _params_by_kind(model, strategy)
    for r, idx in enumerate(layers):
        dense = expert = 0.0
        for i in idx:
            d, e = per_layer[model.is_moe_layer(i)]
            dense, expert = dense + d, expert + e
        if r == 0:
            dense += model.embedding_params() / strategy.tp
        if r == strategy.pp - 1:
            dense += model.hidden * (2 if model.norm == "layernorm" else 1)
            if not model.tied_embeddings:
                dense += model.output_params() / strategy.tp
            elif strategy.pp > 1:
                dense += model.embedding_params() / strategy.tp
        out.append((dense, expert))
    return out


def state_bytes_per_param(framework: str, zero, shard, precision: str = "bf16", microbatches=1):
    """(weight, gradient, optimizer) bytes per parameter at ZeRO stage `zero` sharded over `shard` ranks.
    Megatron-family bf16/fp16: 2 + 4 (fp32 main grad) + 12 -> 18, distributed optimizer 6 + 12/d
    (theoretical_memory_usage.py; dist_optimizer.md). ZeRO-2 also shards grads (through gradient accumulation only
    where the engine reduce-scatters every micro-batch: frameworks.zero2_grads_sharded), ZeRO-3 params (ZeRO paper).
    torchtitan/MaxText: fp32 sharded params 4 + grads 4 + Adam 8 = 16/d under FSDP (ZeRO-3).
    `zero` and `shard` may be numpy arrays (the search's memory bound)."""
    conv = conventions_for(framework)
    d = np.maximum(1, shard)
    p = np.where(zero >= 3, conv.param_bytes / d, conv.param_bytes)
    grad = conv.gradient_bytes(precision)
    sharded = (zero >= 3) | ((zero == 2) & zero2_grads_sharded(framework, microbatches))
    g = np.where(sharded, grad / d, grad)
    o = np.where(zero >= 1, conv.optimizer_bytes / d, conv.optimizer_bytes)
    if np.ndim(p) == 0:
        return float(p), float(g), float(o)
    return p, g, o


# ---- totals --------------------------------------------------------------------------------------------------
def memory_by_rank(model, job, strategy, gpu, inflight_microbatches: list[int] | None = None,
                   flash_attention: bool | None = None) -> list[MemoryBreakdown]:
    """MemoryBreakdown of every pipeline rank. inflight_microbatches[r]: peak micro-batch-chunks in flight on
    rank r (pipeline simulator); None -> closed_form_inflight."""
    s, conv = strategy, conventions_for(job.framework)
    flash = uses_flash_attention(job) if flash_attention is None else flash_attention
    drop = _dropout(model, job.framework, None)
    inflight = list(inflight_microbatches) if inflight_microbatches is not None else closed_form_inflight(job, s)
    if len(inflight) != s.pp:
        raise ParaplanError(f"inflight_microbatches has {len(inflight)} entries, expected pp={s.pp}")
    tokens = _tokens(job, s, None)
    tsp = _sp_div(s, conv)
    capacity = gpu.hbm_gib * (1 - job.memory_headroom)
    shard_dense = s.dp * s.cp                 # Megatron dist-opt and FSDP shard over the dp x cp group
    shard_expert = s.expert_dp
    m = num_microbatches(job, s)
    wd, gd, od = state_bytes_per_param(job.framework, s.zero, shard_dense, job.precision, m)
    we, ge, oe = state_bytes_per_param(job.framework, s.zero, shard_expert, job.precision, m)
    per = {False: _per_token(model, job, s, False, flash, drop), True: _per_token(model, job, s, True, flash, drop)}
    layers = rank_layers(model, s)
    torch_pp = conv.torch_pipelining and s.pp > 1
    fp8_gather = job.precision == "fp8" and conv.fp8_param_all_gather
    boundary = tokens * 2 * model.hidden / tsp          # one micro-batch's stage input/output (bf16)
    cp_kv = 0.0
    if conv.cp_all_gather_kv and s.cp > 1:
        # torch context_parallel (_attention.py, all-gather rotater): each layer's attention (and its backward,
        # after recompute) holds K and V of all cp ranks, (cp - 1) chunks beyond the local ones (bf16).
        _, k, v, _ = _widths(model)
        kw = (k + v) / _kv_div(model, s.tp)
        if conv.repeat_kv and not model.mla:
            kw = 2 * model.q_dim / s.tp
        cp_kv = (s.cp - 1) * tokens * 2 * kw
    out = []
    per_layer_params = _params_by_kind(model, s)
    for r, (pdense, pexp) in enumerate(params_by_rank(model, s)):
        weights = pdense * wd + pexp * we
        grads = pdense * gd + pexp * ge
        optim = pdense * od + pexp * oe
        local = [per_layer_params[model.is_moe_layer(i)] for i in layers[r]]
        norms = model.norm_params_per_layer()
        biggest_layer = max((d + e for d, e in local), default=0.0)
        big_linear = max((d - norms for d, e in local), default=0.0) if fp8_gather else 0.0
        transient = 0.0
        if s.zero >= 3:
            # Gathered weights: bf16, except Float8Linear weights all-gathered in fp8 (torchao
            # WeightWithDynamicFloat8CastTensor.fsdp_post_all_gather returns the fp8 tensor: 1 B/param).
            if torch_pp:
                # torchtitan parallelize.py apply_fsdp: reshard_after_forward=False under PP, and
                # pipelining/stage.py backward_maybe_with_nosync turns off gradient sync until the last backward,
                # so FSDP2 keeps the whole stage unsharded and accumulates unsharded fp32 grads
                # (FSDPParam.to_accumulated_grad_if_needed): resident, not transient.
                rank_linear = sum(d - norms for d, e in local) if fp8_gather else 0.0
                weights += (pdense + pexp) * 2 - rank_linear
                grads += (pdense + pexp) * 4
                transient += biggest_layer * (2 + 4)    # bf16 grad before accumulation + fp32 reduce-scatter copy
            else:
                # FSDP/ZeRO-3: ~2 layers of gathered params (current + prefetch) and one layer's unsharded
                # grads in bf16 plus the fp32 reduce-scatter copy (perf_models.md 3.5.3).
                transient += 2 * (biggest_layer * 2 - big_linear) + biggest_layer * (2 + 4)
        if job.precision == "fp8":
            if s.zero >= 3:
                # fp8 casts of the gathered layer (bf16 gather) or its transposed fp8 copy (fp8 gather)
                transient += biggest_layer * (1 if fp8_gather else 2)
            else:
                weights += pdense + pexp               # TE fp8 weight copy, +1 B/param (simplification)
        # stored activations: inflight chunks x (layers of this rank / vpp) per chunk
        per_rank_tokens = sum(per[model.is_moe_layer(i)][0] for i in layers[r]) / s.vpp
        act = inflight[r] * per_rank_tokens * tokens
        mb_inflight = -(-inflight[r] // s.vpp)          # whole micro-batches touching the first/last chunk
        if torch_pp:
            # pipelining/stage.py _prepare_forward_infra / _prepare_backward_infra: every (virtual) stage
            # preallocates one activation receive buffer (non-first stages) and one gradient receive buffer
            # (non-last stages) per micro-batch, kept across steps. The in-flight receive buffers are the first
            # layer's saved input, already counted above.
            n_stages = s.pp * s.vpp
            recv_mbs = sum((m - min(m, mb_inflight) if r + c * s.pp > 0 else 0)
                           + (m if r + c * s.pp < n_stages - 1 else 0) for c in range(s.vpp))
            # forward_one_chunk also keeps each in-flight micro-batch's stage output in fwd_cache until its
            # backward (with full recompute the last layer's output is otherwise not saved).
            sends = sum(1 for c in range(s.vpp) if r + c * s.pp < n_stages - 1)
            act += (recv_mbs + sends * mb_inflight) * boundary
        if r == 0:                                       # token ids (int64) + embedding dropout mask
            act += mb_inflight * tokens * (8 + (model.hidden / tsp if drop else 0))
        work = max((per[model.is_moe_layer(i)][1] for i in layers[r]), default=0.0) * tokens + cp_kv
        if r == s.pp - 1:
            last_mb = mb_inflight if s.schedule == "gpipe" else 1
            # final-norm input (sharded with SP) + LM-head input; a DTensor ColwiseParallel output layer
            # (torchtitan apply_tp: input_layouts=Shard(1)) saves the all-gathered full-sequence input.
            head_in = 2 * model.hidden / (1 if (conv.dtensor_tp_gathered_inputs and s.tp > 1) else tsp)
            act += last_mb * tokens * (2 * model.hidden / tsp + head_in)
            ce = conv.ce_bytes_per_logit
            if job.framework == "torchtitan" and s.tp > 1:
                ce = 16                                 # DTensor loss_parallel temporaries (frameworks.py)
            logits = tokens * model.vocab / s.tp * ce   # vocab-parallel logits + cross-entropy, fp32
            work = max(work, logits)
            if torch_pp:
                # pipelining/stage.py forward_one_chunk: the last stage appends every micro-batch's output to
                # output_chunks (merged and returned by schedule.step, cleared at the next step), so all m
                # micro-batches' logits (fp32 in torchtitan) stay resident through the step.
                act += m * tokens * model.vocab / s.tp * conv.output_logit_bytes
        transient += work
        act_gib, trans_gib = act / GIB, transient / GIB
        out.append(MemoryBreakdown(
            weights_gib=weights / GIB, gradients_gib=grads / GIB, optimizer_gib=optim / GIB,
            activations_gib=act_gib, transient_gib=trans_gib,
            overhead_gib=conv.overhead_fixed_gib + conv.overhead_fraction * (act_gib + trans_gib),
            capacity_gib=capacity))
    return out


def memory_per_gpu(model, job, strategy, gpu, inflight_microbatches: list[int] | None = None,
                   flash_attention: bool | None = None) -> MemoryBreakdown:
    """The most loaded pipeline rank (max total over ranks)."""
    return max(memory_by_rank(model, job, strategy, gpu, inflight_microbatches, flash_attention),
               key=lambda b: b.total_gib)
