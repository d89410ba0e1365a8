"""Each training framework's conventions, in one table: the strategy defaults an estimate assumes when a run does
not say, what the engine stores in memory and in which dtype, and how it reduces gradients.

Strategy defaults: Megatron-LM arguments.py and NeMo recipes (SP on with TP, distributed optimizer, overlap flags
on); vTrain's Megatron-DeepSpeed setup (no gradient bucketing: the DP all-reduce runs after the last backward);
torchtitan's llama3 configs (FSDP2 = ZeRO-3, selective AC default). Memory conventions: see each entry; the two
torchtitan fudge numbers are calibrated on the torchtitan Llama 3.1 8B benchmark (Tables 1 and 3 of
benchmarks/llama3_h100_202412_torchtitan.md) and checked out of sample on its Tables 2 and 4 (tests/test_memory.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

FRAMEWORK_DEFAULTS: dict[str, dict] = {
    "megatron-lm": {"sequence_parallel": True, "zero": 1, "recompute": "none", "overlap_grad_reduce": True,
                    "overlap_param_gather": True, "tp_comm_overlap": False},
    "nemo": {"sequence_parallel": True, "zero": 1, "recompute": "none", "overlap_grad_reduce": True,
             "overlap_param_gather": True, "tp_comm_overlap": False},
    "megatron-deepspeed": {"sequence_parallel": False, "zero": 0, "recompute": "full", "overlap_grad_reduce": False,
                           "overlap_param_gather": False, "tp_comm_overlap": False},
    "deepspeed": {"sequence_parallel": False, "zero": 1, "recompute": "none", "overlap_grad_reduce": True,
                  "overlap_param_gather": False, "tp_comm_overlap": False},
    "torchtitan": {"sequence_parallel": True, "zero": 3, "recompute": "selective", "overlap_grad_reduce": True,
                   "overlap_param_gather": True, "tp_comm_overlap": False},
    "maxtext": {"sequence_parallel": False, "zero": 3, "recompute": "full", "overlap_grad_reduce": True,
                "overlap_param_gather": True, "tp_comm_overlap": False},
    "other": {"sequence_parallel": True, "zero": 1, "recompute": "none", "overlap_grad_reduce": True,
              "overlap_param_gather": True, "tp_comm_overlap": False},
}


@dataclass(frozen=True)
class FrameworkLimits:
    """What an engine can run: the search offers only these, and exports refuse the rest."""
    zero: tuple[int, ...] = (0, 1, 2, 3)            # ZeRO stages (1 = Megatron's distributed optimizer)
    zero_with_pp: tuple[int, ...] = (0, 1, 2, 3)    # ... of those, the ones allowed with pp > 1
    sequence_parallel: tuple[bool, ...] = (False, True)   # Megatron SP settings possible with tp > 1
    context_parallel: bool = True
    interleaved: bool = True


# Megatron-LM / NeMo: DDP, distributed optimizer, Megatron FSDP (optim_grads = 2, optim_grads_params = 3).
# DeepSpeed's PipelineEngine refuses ZeRO-2/3 ("ZeRO-2 and ZeRO-3 are incompatible with pipeline parallelism")
# and has no interleaved schedule, no context parallelism (Ulysses is a different scheme) and no Megatron SP.
# torchtitan: DDP (dp_replicate), FSDP2 with reshard_after_forward=False (ZeRO-2) or True (ZeRO-3); its TP plan
# always shards norms over the sequence (SequenceParallel).
FRAMEWORK_LIMITS: dict[str, FrameworkLimits] = {
    "megatron-lm": FrameworkLimits(),
    "nemo": FrameworkLimits(),
    "megatron-deepspeed": FrameworkLimits(zero_with_pp=(0, 1), context_parallel=False, interleaved=False),
    "deepspeed": FrameworkLimits(zero_with_pp=(0, 1), sequence_parallel=(False,), context_parallel=False,
                                 interleaved=False),
    "torchtitan": FrameworkLimits(zero=(0, 2, 3), zero_with_pp=(0, 2, 3), sequence_parallel=(True,)),
    "maxtext": FrameworkLimits(),
    "other": FrameworkLimits(),
}


def framework_limits(framework: str) -> FrameworkLimits:
    return FRAMEWORK_LIMITS.get(framework, FRAMEWORK_LIMITS["other"])


def defaults_for(framework: str) -> dict:
    return dict(FRAMEWORK_DEFAULTS.get(framework, FRAMEWORK_DEFAULTS["other"]))


def strategy_defaults(framework: str, tp: int, precision: str, sequence_parallel: bool | None = None) -> dict:
    """Strategy fields a run leaves unsaid, as the framework sets them for this TP degree and precision:
    sequence parallelism only with TP; TP communication overlap (Transformer Engine userbuffers) only with SP and
    outside fp16, which in Megatron-family runs means the pre-TE code that had no such overlap."""
    d = defaults_for(framework)
    sp = d["sequence_parallel"] and tp > 1 if sequence_parallel is None else sequence_parallel
    return {"sequence_parallel": sp, "zero": d["zero"], "recompute": d["recompute"],
            "overlap_grad_reduce": d["overlap_grad_reduce"], "overlap_param_gather": d["overlap_param_gather"],
            "tp_comm_overlap": d["tp_comm_overlap"] and sp and tp > 1 and precision != "fp16"}


MEGATRON_FAMILY = ("megatron-lm", "nemo", "megatron-deepspeed", "deepspeed", "other")


@dataclass(frozen=True)
class MemoryConventions:
    flash_attention: bool         # attention stores only the fp32 log-sum-exp, not the a*s*s scores
    fused_swiglu: bool            # SwiGLU stores [gate, up] + product (6*ffn B/token) vs unfused 8*ffn
    selective_style: str          # "megatron": drop core attention; "torchtitan-op": op-level SAC policy
    param_bytes: float            # bytes/param of the weights used in forward (bf16 copy or fp32 master)
    grad_bytes: float             # bytes/param of the gradient kept for the optimizer
    optimizer_bytes: float        # bytes/param of optimizer state (fp32 master copy if separate + Adam m, v)
    ce_bytes_per_logit: float     # peak bytes per logit element (per TP shard) of output layer + cross-entropy
    always_sp_with_tp: bool       # engine shards norm/residual activations over TP whenever tp > 1
    overhead_fixed_gib: float     # CUDA context + NCCL/communicator buffers + library workspaces
    overhead_fraction: float      # allocator fragmentation, as a fraction of activations + transients
    # torchtitan-style mechanisms (defaults keep the Megatron-family accounting unchanged):
    output_logit_bytes: float = 2.0       # dtype of the model output (logits) a pipeline may keep
    dtensor_tp_gathered_inputs: bool = False  # SP->TP redistribute outside the Linear: column-parallel
    #                                           GEMMs save the all-gathered (full-sequence) input
    repeat_kv: bool = False               # GQA K/V expanded to all query heads before attention (saved q-wide)
    fp8_param_all_gather: bool = False    # FSDP all-gathers Float8Linear weights in fp8 (unsharded = 1 B/param)
    cp_all_gather_kv: bool = False        # context parallel all-gathers K/V over the CP group per layer
    torch_pipelining: bool = False        # PP via torch.distributed.pipelining (stage.py conventions)
    fp8_grad_bytes: float | None = None   # gradient bytes/param when training in fp8, if not grad_bytes
    fp8_saves_gemm_inputs: bool = False   # Transformer Engine in fp8 keeps each Linear's input for wgrad as its
    #                                       fp8 cast (1 B), not the bf16 tensor

    def gradient_bytes(self, precision: str) -> float:
        return self.fp8_grad_bytes if precision == "fp8" and self.fp8_grad_bytes is not None else self.grad_bytes


# Megatron-LM / NeMo (perf_models.md 3.5.2): bf16 params 2 + fp32 main grads 4 + fp32 master 4 + Adam 8.
# CE: bf16 logits (2) + the fp32 copy VocabParallelCrossEntropy works on in place (4) = 6 B/logit
# (megatron/core/tensor_parallel/cross_entropy.py). Overhead: ~0.5 GiB CUDA context (PyTorch PR #86509) +
# ~1 GiB NCCL buffers with several process groups + TE/cuBLAS workspaces; Megatron's own 1.05 factor on
# activations plus allocator slack -> 10 % (perf_models.md 3.5.3).
# fp8 runs use Transformer Engine, whose _Linear.forward saves `inputmat_t` / `inputmat`, the fp8 cast of the
# GEMM input, for the weight gradient (module/linear.py, `if fp8 and not ...override_linear_precision.wgrad`).
_MEGATRON = MemoryConventions(flash_attention=True, fused_swiglu=True, selective_style="megatron",
                              param_bytes=2, grad_bytes=4, optimizer_bytes=12, ce_bytes_per_logit=6,
                              always_sp_with_tp=False, overhead_fixed_gib=2.0, overhead_fraction=0.10,
                              fp8_saves_gemm_inputs=True)

FRAMEWORK_MEMORY: dict[str, MemoryConventions] = {
    "megatron-lm": _MEGATRON,
    # NeMo's performance recipes (the published NeMo / DGX Cloud / Megatron-Bridge runs) reduce and keep gradients in
    # bf16 when training in fp8: scripts/performance/helpers.py set_precision_configs sets
    # plugins.grad_reduce_in_fp32 = False for fp8 (bf16 runs keep the fp32 main grads).
    "nemo": replace(_MEGATRON, fp8_grad_bytes=2),
    # vTrain-era Megatron-DeepSpeed (2021 code): no FlashAttention, attention scores stored (Korthikanti 2022
    # Table 2 as printed). Same fp32 main-grad convention as Megatron for bf16/fp16.
    "megatron-deepspeed": MemoryConventions(flash_attention=False, fused_swiglu=True, selective_style="megatron",
                                            param_bytes=2, grad_bytes=4, optimizer_bytes=12, ce_bytes_per_logit=6,
                                            always_sp_with_tp=False, overhead_fixed_gib=2.0,
                                            overhead_fraction=0.10),
    # DeepSpeed engine (ZeRO paper accounting, K = 12); bf16 optimizer accumulates grads in fp32 (4 B).
    "deepspeed": MemoryConventions(flash_attention=True, fused_swiglu=False, selective_style="megatron",
                                   param_bytes=2, grad_bytes=4, optimizer_bytes=12, ce_bytes_per_logit=6,
                                   always_sp_with_tp=False, overhead_fixed_gib=2.0, overhead_fraction=0.10),
    # torchtitan (FSDP2 MixedPrecisionPolicy(param bf16, reduce fp32)): the sharded parameter is the fp32
    # master (4) + fp32 grad (4) + Adam m, v (8) = 16 B/param, all sharded. Unfused SwiGLU in eager PyTorch.
    # CE: model returns self.output(h).float(); F.cross_entropy's log_softmax_backward holds the saved fp32
    # output, the fp32 grad_output and the fp32 grad_input at once = 12 B/logit (train.py does `del pred`).
    # With TP the DTensor loss_parallel log_softmax materialises shifted/exp temporaries: 16 B/logit (derived
    # from torch/distributed/tensor/parallel/loss.py; less sure). Fudge: peak *reserved* memory is what
    # torchtitan prints; reserved/allocated ~1.18 on Llama 3.1 8B (calibrated, see module docstring).
    # Mechanisms (sources in paraplan/cost/memory.py): llama3 model.py returns self.output(h).float() (fp32
    # logits) and calls repeat_kv before SDPA; parallelize.py apply_tp redistributes Shard(1) -> Replicate in
    # PrepareModuleInput / ColwiseParallel(input_layouts=Shard(1)) so the gathered input is what the Linear
    # saves; the llama3 train configs set float8.enable_fsdp_float8_all_gather; context parallel is
    # torch.distributed.tensor.experimental context_parallel (all-gather K/V); PP is torch.distributed.pipelining.
    "torchtitan": MemoryConventions(flash_attention=True, fused_swiglu=False, selective_style="torchtitan-op",
                                    param_bytes=4, grad_bytes=4, optimizer_bytes=8, ce_bytes_per_logit=12,
                                    always_sp_with_tp=True, overhead_fixed_gib=1.0, overhead_fraction=0.18,
                                    output_logit_bytes=4.0, dtensor_tp_gathered_inputs=True, repeat_kv=True,
                                    fp8_param_all_gather=True, cp_all_gather_kv=True, torch_pipelining=True),
    # MaxText (JAX): weight_dtype float32 by default, fp32 grads and Adam moments -> 16 B/param; XLA plans
    # buffers statically, so little fragmentation; fused (XLA) CE ~ bf16 logits + fp32 softmax.
    "maxtext": MemoryConventions(flash_attention=True, fused_swiglu=True, selective_style="megatron",
                                 param_bytes=4, grad_bytes=4, optimizer_bytes=8, ce_bytes_per_logit=6,
                                 always_sp_with_tp=False, overhead_fixed_gib=1.0, overhead_fraction=0.05),
}
FRAMEWORK_MEMORY["other"] = _MEGATRON


def conventions_for(framework: str) -> MemoryConventions:
    return FRAMEWORK_MEMORY.get(framework, FRAMEWORK_MEMORY["other"])


def uses_flash_attention(job) -> bool:
    """Whether the engine runs a fused (flash) attention kernel for this job. megatron-deepspeed rows (vTrain,
    2021-era code) store attention scores. Megatron-family fp16 runs predate Transformer Engine (flash attention
    reached Megatron with TE and bf16 in 2023; the 2021-22 papers used FusedScaleMaskSoftmax), so fp16 there
    means unfused attention too. Every other engine uses flash."""
    if not conventions_for(job.framework).flash_attention:
        return False
    return not (job.precision == "fp16" and job.framework in MEGATRON_FAMILY)


# ZeRO-2 under gradient accumulation (m > 1 micro-batches per step). Engines that keep only the gradient shard
# reduce-scatter in every micro-batch's backward: DeepSpeed stage 2 (DeepSpeed PR #7366: ZeRO-2 "performs allreduce
# at every iteration even when it is not a gradient accumulation boundary"), torch FSDP2 / torchtitan (a
# reduce-scatter in each backward unless gradient sync is disabled), MaxText. Megatron-Core's training loop runs
# every micro-batch but the last under the DDP/FSDP no_sync context, so gradients accumulate unsharded and are
# reduce-scattered once (its "ZeRO-2", Megatron-FSDP optim_grads, then saves gradient memory only without
# accumulation); an unnamed engine is taken to do the same (MegaScale describes its ZeRO-2 this way).
ZERO2_REDUCES_EVERY_MICROBATCH = frozenset({"deepspeed", "megatron-deepspeed", "torchtitan", "maxtext"})


def reduces_in_backward(zero: int, framework: str) -> bool:
    """Whether gradients are reduce-scattered layer by layer in every backward (ZeRO-3, and ZeRO-2 on the engines
    above) rather than once after the last micro-batch."""
    return zero == 3 or (zero == 2 and framework in ZERO2_REDUCES_EVERY_MICROBATCH)


def zero2_grads_sharded(framework: str, microbatches):
    """Whether ZeRO-2 holds only the gradient shard through the step (`microbatches` may be a numpy array)."""
    if framework in ZERO2_REDUCES_EVERY_MICROBATCH:
        return microbatches >= 0                         # always (the comparison keeps an array's shape)
    return microbatches <= 1


def grad_reduce_bytes_per_param(framework: str, precision: str = "bf16") -> float:
    """Bytes per parameter the DP gradient reduction moves. Megatron keeps fp32 main grads and reduces them in fp32
    (arguments.py: grad_reduce_in_fp32 for bf16), NeMo's fp8 recipes in bf16 (MemoryConventions.fp8_grad_bytes);
    torchtitan's FSDP2 reduce dtype is fp32; the 2021-era Megatron-DeepSpeed fp16 runs and DeepSpeed's engine
    reduce in half precision."""
    if framework in ("megatron-deepspeed", "deepspeed"):
        return 2
    return conventions_for(framework).gradient_bytes(precision)
