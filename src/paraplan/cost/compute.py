"""Computation cost: FLOPs and bytes per operator of one transformer layer, turned into seconds on one GPU.

Each operator is a GEMM (shape-aware efficiency: tile and wave quantisation, short-K prologue), an attention kernel
(flash: efficiency rising with sequence length; unfused: batched GEMMs plus s^2 softmax traffic) or a memory-bound
element-wise kernel (bytes over HBM bandwidth). Every kernel costs at least `kernel_floor_s`, and a layer at least
the host time to launch it (eager frameworks are launch-bound on small layers). In fp8 the layer's linear GEMMs run
at the fp8 rate and pay the cast of what they multiply; the router stays bf16, and the LM head in the Megatron family
(FP8_LINEAR_OPS).
Sources: perf_models.md 3.2 (Narayanan 2021 FLOP counts, LLMCompass A100 GEMM shapes, FlashAttention-2/3).
"""
from __future__ import annotations

import functools
import math
from functools import lru_cache

import numpy as np
from dataclasses import dataclass

from paraplan.cost import measured
from paraplan.cost.calibration import Calibration
from paraplan.frameworks import MEGATRON_FAMILY, uses_flash_attention
from paraplan.specs import GPUSpec, JobSpec, ModelSpec, Strategy
from paraplan.specs.loaders import load_gpu


FLOP_FORMULA = ("model FLOPs per iteration = 6*tokens*(active layer params + vocab*hidden) "
                "+ 12*tokens*layers*seq_len*q_dim (attention scores and context, not halved for causal masks; "
                "recompute not counted)")


@dataclass(frozen=True)
class Op:
    name: str
    kind: str            # "gemm", "attn", "mem"
    flops: float = 0.0   # forward FLOPs
    bytes: float = 0.0   # forward HBM bytes (mem ops)
    m: int = 0
    n: int = 0
    k: int = 0
    batch: int = 1       # batched GEMMs (unfused attention: b * heads)


@dataclass(frozen=True)
class LayerCompute:
    """Seconds for one micro-batch through one layer on one GPU: the GPU's kernel time and the host's time to
    launch them. The GPU runs behind the host, so a pass takes the longer of the two (plus what the GPU waits on
    communication; see estimate.py)."""
    gpu_forward_s: float
    gpu_backward_s: float
    host_forward_s: float
    host_backward_s: float
    forward_flops: float

    @property
    def forward_s(self) -> float:
        return max(self.gpu_forward_s, self.host_forward_s)

    @property
    def backward_s(self) -> float:
        return max(self.gpu_backward_s, self.host_backward_s)


# (tile rows, tile cols, relative efficiency of the kernel): cuBLAS picks among tile shapes per problem; smaller
# tiles fill the SMs better on small problems but reuse less data (NVIDIA matmul performance guide).
GEMM_TILES = ((256, 128, 1.0), (128, 256, 1.0), (128, 128, 0.92), (128, 64, 0.80), (64, 64, 0.65))


@lru_cache(maxsize=1 << 16)          # a search costs the same GEMM shapes many times
def tile_efficiency(m: int, n: int, batch: int, sm_count: int) -> float:
    """Best over GEMM_TILES of tile quantisation (partial tiles waste work) x wave quantisation (the last wave
    leaves SMs idle) x the tile's own efficiency."""
    best = 0.0
    for tm, tn, rel in GEMM_TILES:
        tiles = math.ceil(m / tm) * math.ceil(n / tn) * batch
        waves = math.ceil(tiles / sm_count)
        useful = (m * n * batch) / (tiles * tm * tn)
        best = max(best, rel * useful * tiles / (waves * sm_count))
    return best


def gemm_time(m: int, n: int, k: int, gpu: GPUSpec, cal: Calibration, precision: str, batch: int = 1) -> float:
    """Time of C[m,n] = A[m,k] B[k,n] (x batch): calibrated peak efficiency x tile/wave quantisation x the short-K
    main-loop prologue, bounded below by the bytes moved and by the kernel floor."""
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    flops = 2.0 * m * n * k * batch
    peak = _gemm_peak_tflops(gpu, cal, precision) * 1e12
    eff = gemm_efficiency(m, n, k, gpu, cal, batch)
    if cal.gemm_measured:           # a hardware profile: measured throughput near this shape corrects the level
        eff *= _measured_gemm_correction(gpu, cal, precision, m, n, k)
    compute = flops / (peak * eff)
    bytes_moved = (m * k + k * n) * batch * (1 if precision == "fp8" else 2) + m * n * batch * 2
    return max(compute, bytes_moved / (gpu.hbm_gbps * 1e9 * cal.memory_efficiency), cal.kernel_floor_s)


def _gemm_peak_tflops(gpu: GPUSpec, cal: Calibration, precision: str) -> float:
    peak = gpu.peak("bf16") * cal.clock_scale
    return peak * cal.fp8_gemm_speedup if precision == "fp8" else peak


def gemm_efficiency(m: int, n: int, k: int, gpu: GPUSpec, cal: Calibration, batch: int = 1) -> float:
    """Analytic fraction of peak: calibrated large-GEMM efficiency x tile/wave quantisation x short-K prologue."""
    return cal.gemm_efficiency * tile_efficiency(m, n, batch, gpu.sm_count) * k / (k + cal.gemm_k_half)


@functools.lru_cache(maxsize=65536)
def _measured_gemm_correction(gpu: GPUSpec, cal: Calibration, precision: str, m: int, n: int, k: int) -> float:
    rows, table_precision = measured.gemm_rows(cal.gemm_measured, precision)
    peak = _gemm_peak_tflops(gpu, cal, table_precision)
    correction = measured.gemm_correction(rows, m, n, k, lambda mm, nn, kk: peak * gemm_efficiency(mm, nn, kk, gpu, cal))
    return correction * _reference_scale(gpu, cal)


@functools.cache
def _reference_scale(gpu: GPUSpec, cal: Calibration) -> float:
    """A table measured on another part of the same architecture (calibration.builtin_gemm_table) runs at this
    GPU's peak x clock_scale over the reference's peak: GB200 at 1,200 W is 2,500/2,250 of an HGX B200, a
    power-capped H100 0.92 of an H100 SXM."""
    if not cal.gemm_reference_gpu or cal.gemm_reference_gpu == gpu.name:
        return 1.0
    return gpu.peak("bf16") * cal.clock_scale / load_gpu(cal.gemm_reference_gpu).peak("bf16")


def mem_time(nbytes, gpu: GPUSpec, cal: Calibration):
    """Seconds of a memory-bound kernel (nbytes may be a numpy array: the search costs many at once)."""
    t = nbytes / (gpu.hbm_gbps * 1e9 * cal.memory_efficiency)
    return np.maximum(t, cal.kernel_floor_s) if isinstance(t, np.ndarray) else max(t, cal.kernel_floor_s)


def attention_head_dim_factor(head_dim: int, half: float) -> float:
    """Attention efficiency at `head_dim` relative to 128: d / (d + half) normalised at 128 (Calibration
    .attention_head_dim_half; 0 = no head-dim effect). Heads wider than 128 get no credit."""
    if half <= 0:
        return 1.0
    d = min(head_dim, 128)
    return (d / (d + half)) / (128 / (128 + half))


def flash_attention_time(flops: float, seq: int, gpu: GPUSpec, cal: Calibration, backward: bool,
                         head_dim: int = 128) -> float:
    eff = (cal.attention_efficiency * cal.attention_kernel_scale * seq / (seq + cal.attention_seq_half)
           * attention_head_dim_factor(head_dim, cal.attention_head_dim_half))
    if backward:
        flops *= cal.attention_backward_ratio
    return max(flops / (gpu.peak("bf16") * 1e12 * cal.clock_scale * eff), cal.kernel_floor_s)


def layer_ops(model: ModelSpec, job: JobSpec, strategy: Strategy, moe_layer: bool = False,
              micro_batch: int | None = None, flash_attention: bool | None = None) -> list[Op]:
    """Forward operators of one layer for one micro-batch on one GPU (TP shards, CP shards the sequence).
    `flash_attention` None -> the framework's convention (paraplan.frameworks)."""
    if flash_attention is None:
        flash_attention = uses_flash_attention(job)
    b = micro_batch or strategy.micro_batch
    tp, cp = strategy.tp, strategy.cp
    s_q = job.seq_len // cp                 # queries held by this rank
    tokens = b * s_q                        # GEMM rows (SP gathers the full local sequence before each GEMM)
    h = model.hidden
    heads = max(1, model.heads // tp)
    kv_heads_local = max(1, model.kv_heads // tp)
    q_local = model.q_dim // tp
    kv_local = kv_heads_local * model.head_dim if not model.mla else model.kv_dim // tp
    ops: list[Op] = []
    act = 2                                 # bytes per activation element (bf16/fp16)
    # Norm, attention block and residual. SP shards the element-wise work over TP.
    ew_shard = tp if strategy.sequence_parallel else 1
    ops.append(Op("input_norm", "mem", bytes=2 * tokens * h * act / ew_shard))
    ops.append(Op("qkv_proj", "gemm", flops=2 * tokens * h * (q_local + 2 * kv_local), m=tokens, n=q_local + 2 * kv_local, k=h))
    if model.norm == "rmsnorm":             # Llama-style models apply rotary embeddings to Q and K
        ops.append(Op("rotary", "mem", bytes=2 * tokens * (q_local + kv_local) * act))
    head_dim = model.head_dim if not model.mla else (model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim)
    v_dim = model.head_dim if not model.mla else model.mla.v_head_dim
    s_k = job.seq_len                       # keys attended to (CP ring brings the other ranks' K/V)
    if flash_attention:
        # causal attention with block skipping: half of the s_q x s_k score matrix
        flops = 2 * b * heads * s_q * s_k * (head_dim + v_dim) * 0.5
        ops.append(Op("flash_attention", "attn", flops=flops, m=s_q, k=head_dim))
    else:
        # Megatron 2021: two batched GEMMs over the full s x s scores, softmax + mask + dropout unfused
        ops.append(Op("attn_scores", "gemm", flops=2 * b * heads * s_q * s_k * head_dim, m=s_q, n=s_k, k=head_dim, batch=b * heads))
        scores = b * heads * s_q * s_k
        if job.framework in MEGATRON_FAMILY and not megatron_fused_softmax_available(b, heads, s_q, s_k):
            # FusedScaleMaskSoftmax.forward_torch_softmax: fp32 cast, scale, masked_fill, softmax, cast back, each
            # its own kernel over the s x s scores (and its own autograd node in backward)
            ops.append(Op("softmax_cast", "mem", bytes=scores * (act + 4)))
            ops.append(Op("softmax_scale", "mem", bytes=scores * 8))
            ops.append(Op("softmax_mask", "mem", bytes=scores * 9))
            ops.append(Op("softmax", "mem", bytes=scores * 8))
            ops.append(Op("softmax_cast_back", "mem", bytes=scores * (4 + act)))
        else:
            ops.append(Op("softmax", "mem", bytes=scores * act * 2))
        ops.append(Op("attn_dropout", "mem", bytes=scores * (act * 2 + 1)))
        ops.append(Op("attn_context", "gemm", flops=2 * b * heads * s_q * s_k * v_dim, m=s_q, n=v_dim, k=s_k, batch=b * heads))
    ops.append(Op("out_proj", "gemm", flops=2 * tokens * heads * v_dim * h, m=tokens, n=h, k=heads * v_dim))
    ops.append(Op("residual_dropout_add", "mem", bytes=3 * tokens * h * act / ew_shard))
    ops.append(Op("post_attn_norm", "mem", bytes=2 * tokens * h * act / ew_shard))
    # MLP
    mats = 2 if model.gated_mlp else 1
    if moe_layer and model.moe:
        moe = model.moe
        ops.append(Op("router", "gemm", flops=2 * tokens * h * moe.num_experts, m=tokens, n=moe.num_experts, k=h))
        ffn = moe.expert_ffn // strategy.expert_tp
        # tokens per GPU after dispatch (balanced routing): with expert TP < TP each TP rank dispatches only its
        # 1/tp share of the tokens (Megatron's alltoall dispatcher after the sequence-parallel split)
        routed = tokens * moe.top_k * strategy.expert_tp // tp
        local_experts = max(1, moe.num_experts // strategy.ep)
        rows = max(1, routed // local_experts)
        ops.append(Op("expert_up", "gemm", flops=2 * routed * h * ffn * mats, m=rows, n=ffn * mats, k=h, batch=local_experts))
        ops.append(Op("expert_act", "mem", bytes=routed * ffn * act * (mats + 1)))
        ops.append(Op("expert_down", "gemm", flops=2 * routed * ffn * h, m=rows, n=h, k=ffn, batch=local_experts))
        ops.append(Op("permute", "mem", bytes=4 * routed * h * act))
        if moe.shared_experts:
            sffn = (moe.shared_expert_ffn or moe.expert_ffn) * moe.shared_experts // tp
            ops.append(Op("shared_up", "gemm", flops=2 * tokens * h * sffn * mats, m=tokens, n=sffn * mats, k=h))
            ops.append(Op("shared_down", "gemm", flops=2 * tokens * sffn * h, m=tokens, n=h, k=sffn))
    else:
        ffn = model.ffn // tp
        ops.append(Op("mlp_up", "gemm", flops=2 * tokens * h * ffn * mats, m=tokens, n=ffn * mats, k=h))
        ops.append(Op("mlp_act", "mem", bytes=tokens * ffn * act * (mats + 1)))
        ops.append(Op("mlp_down", "gemm", flops=2 * tokens * ffn * h, m=tokens, n=h, k=ffn))
    ops.append(Op("residual_dropout_add", "mem", bytes=3 * tokens * h * act / ew_shard))
    return ops


def megatron_fused_softmax_available(b: int, heads: int, s_q: int, s_k: int) -> bool:
    """Megatron's FusedScaleMaskSoftmax.is_kernel_available for the causal mask (fused_softmax.py): the fused CUDA
    kernel needs 16 < s_k <= 4096, s_q and s_k multiples of 4 and b * heads a multiple of the kernel's batches per
    block (4 for s_k > 128: 128-thread blocks of one warp per row; 8 below). Otherwise PyTorch runs it op by op."""
    attn_batches = b * heads
    if not (16 < s_k <= 4096 and s_q % 4 == 0 and s_k % 4 == 0 and attn_batches % 4 == 0):
        return False
    pow2 = 1 << max(0, (s_k - 1).bit_length())
    batches_per_block = 4 * (2 if pow2 <= 128 else 1)
    return attn_batches % batches_per_block == 0


# The linear layers fp8 training runs in fp8 (Transformer Engine modules, torchao Float8Linear); the router and
# unfused attention stay bf16, and so does the LM head in the Megatron family (its output layer is a plain
# ColumnParallelLinear, outside Transformer Engine; torchtitan's float8 converter filters nothing by default).
FP8_LINEAR_OPS = frozenset({"qkv_proj", "out_proj", "mlp_up", "mlp_down", "expert_up", "expert_down", "shared_up",
                            "shared_down", "lm_head"})
FP8_CAST_BYTES = 4      # per element: read bf16 (2), write the fp8 copy (1) and its fp8 transpose (1)


def op_time(op: Op, gpu: GPUSpec, cal: Calibration, precision: str, backward: bool) -> float:
    """Backward of a GEMM is two GEMMs of the same size (input gradient and weight gradient). In fp8 a linear layer
    first casts what it multiplies: its input in forward, the output gradient in backward (TE's fused
    cast-transpose: the fp8 tensor and its transpose for the other GEMM), a memory-bound pass the GEMM speed-up
    does not cover; the weights' casts are cached across micro-batches and not counted."""
    if op.kind == "gemm":
        fp8_linear = precision == "fp8" and op.name in FP8_LINEAR_OPS
        if precision == "fp8" and not fp8_linear:
            precision = "bf16"
        if not backward:
            t = gemm_time(op.m, op.n, op.k, gpu, cal, precision, op.batch)
            return t + (mem_time(op.m * op.k * op.batch * FP8_CAST_BYTES, gpu, cal) if fp8_linear else 0.0)
        # dgrad: [m,k] = [m,n][n,k]; wgrad: [k,n] = [k,m][m,n]
        t = gemm_time(op.m, op.k, op.n, gpu, cal, precision, op.batch) + gemm_time(op.k, op.n, op.m, gpu, cal, precision, op.batch)
        return t + (mem_time(op.m * op.n * op.batch * FP8_CAST_BYTES, gpu, cal) if fp8_linear else 0.0)
    if op.kind == "attn":
        return flash_attention_time(op.flops, op.m, gpu, cal, backward, op.k or 128)
    # element-wise backward reads the saved input and the incoming gradient and writes one gradient
    return mem_time(op.bytes * (1.5 if backward else 1.0) * cal.fused_elementwise, gpu, cal)


@dataclass(frozen=True)
class LayerTimes:
    """One layer, one micro-batch, one GPU: its passes and the extra forward work each recompute mode adds to the
    backward, from one costing of its operators."""
    compute: LayerCompute
    recompute_gpu_s: dict           # mode -> GPU seconds ("none" 0, "selective" core attention, "full" the layer)
    recompute_host_s: dict          # mode -> host seconds (full recompute relaunches the layer)
    attention_forward_s: float      # the attention core (scores and context), what CP's ring can hide behind
    attention_backward_s: float


SELECTIVE_RECOMPUTE_OPS = ("flash_attention", "attn_scores", "attn_dropout", "attn_context")
ATTENTION_CORE_OPS = ("flash_attention", "attn_scores", "attn_context")


# The operators beyond a standard layer's (one fused softmax, one dense MLP) that launch kernels of their own:
# PyTorch's op-by-op softmax (megatron_fused_softmax_available False) and a MoE block's router and permutation.
STANDARD_SOFTMAX_OPS = 1


def host_kernel_factor(ops: list[Op]) -> float:
    """Host time of this layer over a standard layer's: the host launches kernel by kernel, so a layer that runs
    more operators (the unfused softmax's cast, scale, mask, softmax and cast back in place of one kernel; a MoE
    block's router and token permutation, which layer_ops emits only for MoE layers) takes proportionally longer
    to launch. 1.0 for a standard layer."""
    softmax = sum(1 for op in ops if op.name.startswith("softmax"))
    extra = max(0, softmax - STANDARD_SOFTMAX_OPS) + sum(1 for op in ops if op.name in ("router", "permute"))
    return len(ops) / (len(ops) - extra)


def layer_times(model: ModelSpec, job: JobSpec, strategy: Strategy, gpu: GPUSpec, cal: Calibration,
                moe_layer: bool = False) -> LayerTimes:
    """Selective recompute reruns only the attention core (a few kernels: no host cost of its own); full reruns
    the whole forward."""
    ops = layer_ops(model, job, strategy, moe_layer)
    fwd = [op_time(op, gpu, cal, job.precision, backward=False) for op in ops]
    bwd_ops = [op_time(op, gpu, cal, job.precision, backward=True) for op in ops]
    bwd = sum(bwd_ops)
    selective = sum(t for op, t in zip(ops, fwd) if op.name in SELECTIVE_RECOMPUTE_OPS or op.name.startswith("softmax"))
    core = [i for i, op in enumerate(ops) if op.name in ATTENTION_CORE_OPS]
    host = cal.layer_host_s * host_kernel_factor(ops)
    lc = LayerCompute(gpu_forward_s=sum(fwd), gpu_backward_s=bwd, host_forward_s=host,
                      host_backward_s=cal.backward_host_ratio * host,
                      forward_flops=sum(op.flops for op in ops))
    return LayerTimes(lc, {"none": 0.0, "selective": selective, "full": sum(fwd)},
                      {"none": 0.0, "selective": 0.0, "full": host},
                      sum(fwd[i] for i in core), sum(bwd_ops[i] for i in core))


def layer_compute(model: ModelSpec, job: JobSpec, strategy: Strategy, gpu: GPUSpec, cal: Calibration,
                  moe_layer: bool = False) -> LayerCompute:
    return layer_times(model, job, strategy, gpu, cal, moe_layer).compute


def embedding_time(model: ModelSpec, job: JobSpec, strategy: Strategy, gpu: GPUSpec, cal: Calibration) -> tuple[float, float]:
    """(forward, backward) of the input embedding lookup on the first stage: a gather and a scatter-add."""
    tokens = strategy.micro_batch * job.seq_len // strategy.cp
    nbytes = tokens * model.hidden * 2
    return mem_time(nbytes * 2, gpu, cal), mem_time(nbytes * 3, gpu, cal)


def head_time(model: ModelSpec, job: JobSpec, strategy: Strategy, gpu: GPUSpec, cal: Calibration) -> tuple[float, float]:
    """(forward, backward) of final norm + LM head GEMM + vocab-parallel cross-entropy (fp32) on the last stage."""
    tokens = strategy.micro_batch * job.seq_len // strategy.cp
    v_local = math.ceil(model.vocab / strategy.tp)
    h = model.hidden
    fwd_gemm = Op("lm_head", "gemm", flops=2 * tokens * h * v_local, m=tokens, n=v_local, k=h)
    logits_bytes = tokens * v_local * 4
    precision = "bf16" if job.precision == "fp8" and job.framework in MEGATRON_FAMILY else job.precision
    fwd = (op_time(fwd_gemm, gpu, cal, precision, False) + mem_time(2 * tokens * h * 2, gpu, cal)
           + mem_time(3 * logits_bytes, gpu, cal))
    bwd = op_time(fwd_gemm, gpu, cal, precision, True) + mem_time(2 * logits_bytes, gpu, cal) + mem_time(3 * tokens * h * 2, gpu, cal)
    return fwd, bwd


def optimizer_time(params_on_gpu, gpu: GPUSpec, cal: Calibration):
    """Adam step over the parameters this GPU updates: reads fp32 master, 2 moments and grad (16 B), writes master,
    moments and the bf16 copy (14 B) (perf_models.md 3.2.4). Multi-tensor apply: a few large kernels."""
    return mem_time(params_on_gpu * 30, gpu, cal) + 20 * cal.kernel_floor_s


def model_flops_per_iteration(model: ModelSpec, job: JobSpec) -> float:
    """Model FLOPs of one optimizer step, for MFU (see FLOP_FORMULA)."""
    tokens = job.tokens_per_step
    layer_params = sum(model.layer_params(i) for i in range(model.layers))
    if model.moe:
        inactive = (model.moe.num_experts - model.moe.top_k) * model.mlp_params(model.moe.expert_ffn)
        layer_params -= inactive * model.num_moe_layers
    return 6 * tokens * (layer_params + model.vocab * model.hidden) + 12 * tokens * model.layers * job.seq_len * model.q_dim
