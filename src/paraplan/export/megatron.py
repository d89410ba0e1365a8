"""Megatron-LM: the `pretrain_gpt.py` flags for a plan, and the torchrun command that launches it.

Flag names are Megatron-LM's (megatron/training/arguments.py; since core_v0.15 most are generated from the fields of
ModelParallelConfig, TransformerConfig and DistributedDataParallelConfig as "--" + name with "_" -> "-"), see
shared/docs/reference/ecosystem.md §1. `FLAG_FIELDS` records, for every flag emitted here, the megatron-core config
field it sets (as megatron/training/argument_utils.py core_transformer_config_from_args does), so that tests can build
megatron-core's own config classes from an export and let their __post_init__ checks judge it."""
from __future__ import annotations

import shlex

from paraplan.export.common import Export, microbatches, nodes_and_gpus, refuse_if_broken, virtual_stage_layers
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Strategy
from paraplan.specs.strategy import default_layer_split

ENGINE_VERSION = "Megatron-LM core_v0.15+ (flags checked against megatron-core 0.16 config classes)"
SCRIPT = "train_megatron.sh"

# flag -> (config class, field) in megatron-core; None where the flag only feeds megatron/training (data, batch).
FLAG_FIELDS: dict[str, tuple[str, str] | None] = {
    "--tensor-model-parallel-size": ("ModelParallelConfig", "tensor_model_parallel_size"),
    "--pipeline-model-parallel-size": ("ModelParallelConfig", "pipeline_model_parallel_size"),
    "--context-parallel-size": ("ModelParallelConfig", "context_parallel_size"),
    "--expert-model-parallel-size": ("ModelParallelConfig", "expert_model_parallel_size"),
    "--expert-tensor-parallel-size": ("ModelParallelConfig", "expert_tensor_parallel_size"),
    "--sequence-parallel": ("ModelParallelConfig", "sequence_parallel"),
    "--tp-comm-overlap": ("ModelParallelConfig", "tp_comm_overlap"),
    # vpp = (layers / pp) / n  (arguments.py validate_args); or the count per rank directly
    "--num-layers-per-virtual-pipeline-stage": ("ModelParallelConfig", "virtual_pipeline_model_parallel_size"),
    "--num-virtual-stages-per-pipeline-rank": ("ModelParallelConfig", "virtual_pipeline_model_parallel_size"),
    "--decoder-first-pipeline-num-layers": ("TransformerConfig", "num_layers_in_first_pipeline_stage"),
    "--decoder-last-pipeline-num-layers": ("TransformerConfig", "num_layers_in_last_pipeline_stage"),
    "--account-for-embedding-in-pipeline-split": ("TransformerConfig", "account_for_embedding_in_pipeline_split"),
    "--account-for-loss-in-pipeline-split": ("TransformerConfig", "account_for_loss_in_pipeline_split"),
    "--pipeline-model-parallel-layout": ("TransformerConfig", "pipeline_model_parallel_layout"),
    "--num-layers": ("TransformerConfig", "num_layers"),
    "--hidden-size": ("TransformerConfig", "hidden_size"),
    "--ffn-hidden-size": ("TransformerConfig", "ffn_hidden_size"),
    "--num-attention-heads": ("TransformerConfig", "num_attention_heads"),
    "--group-query-attention": None,          # gate: without it --num-query-groups is ignored (argument_utils.py)
    "--num-query-groups": ("TransformerConfig", "num_query_groups"),
    "--kv-channels": ("TransformerConfig", "kv_channels"),
    "--swiglu": ("TransformerConfig", "gated_linear_unit"),             # + activation_func = silu
    "--squared-relu": ("TransformerConfig", "activation_func"),
    "--normalization": ("TransformerConfig", "normalization"),
    "--disable-bias-linear": ("TransformerConfig", "add_bias_linear"),   # sets it False
    "--untie-embeddings-and-output-weights": None,                      # GPTModel(share_embeddings_and_output_weights)
    "--position-embedding-type": None,                                  # GPTModel(position_embedding_type)
    "--multi-latent-attention": ("TransformerConfig", "multi_latent_attention"),
    "--q-lora-rank": ("MLATransformerConfig", "q_lora_rank"),
    "--kv-lora-rank": ("MLATransformerConfig", "kv_lora_rank"),
    "--qk-head-dim": ("MLATransformerConfig", "qk_head_dim"),
    "--qk-pos-emb-head-dim": ("MLATransformerConfig", "qk_pos_emb_head_dim"),
    "--v-head-dim": ("MLATransformerConfig", "v_head_dim"),
    "--num-experts": ("TransformerConfig", "num_moe_experts"),
    "--moe-router-topk": ("TransformerConfig", "moe_router_topk"),
    "--moe-ffn-hidden-size": ("TransformerConfig", "moe_ffn_hidden_size"),
    "--moe-shared-expert-intermediate-size": ("TransformerConfig", "moe_shared_expert_intermediate_size"),
    "--moe-layer-freq": ("TransformerConfig", "moe_layer_freq"),
    "--moe-token-dispatcher-type": ("TransformerConfig", "moe_token_dispatcher_type"),
    "--moe-grouped-gemm": ("TransformerConfig", "moe_grouped_gemm"),
    "--recompute-activations": ("TransformerConfig", "recompute_granularity"),   # = selective
    "--recompute-granularity": ("TransformerConfig", "recompute_granularity"),
    "--recompute-method": ("TransformerConfig", "recompute_method"),
    "--recompute-num-layers": ("TransformerConfig", "recompute_num_layers"),
    "--bf16": ("ModelParallelConfig", "bf16"),
    "--fp16": ("ModelParallelConfig", "fp16"),
    "--fp8-format": ("TransformerConfig", "fp8"),
    "--use-distributed-optimizer": ("DistributedDataParallelConfig", "use_distributed_optimizer"),
    "--overlap-grad-reduce": ("DistributedDataParallelConfig", "overlap_grad_reduce"),
    "--overlap-param-gather": ("DistributedDataParallelConfig", "overlap_param_gather"),
    "--use-megatron-fsdp": ("DistributedDataParallelConfig", "use_megatron_fsdp"),
    "--data-parallel-sharding-strategy": ("DistributedDataParallelConfig", "data_parallel_sharding_strategy"),
    "--no-gradient-accumulation-fusion": ("ModelParallelConfig", "gradient_accumulation_fusion"),
    "--ckpt-format": None,
    "--seq-length": None,
    "--max-position-embeddings": None,
    "--micro-batch-size": None,
    "--global-batch-size": None,
    "--vocab-size": None,
    "--tokenizer-type": None,
    "--mock-data": None,
    "--train-iters": None,
    "--lr": None,
}


# ---- rules Megatron-LM enforces beyond paraplan's own strategy rules (specs/strategy.py) ------------------------
def rule_schedule_is_1f1b(s, model, cluster, job):
    if s.schedule == "gpipe":
        return "Megatron-LM runs 1F1B or interleaved 1F1B only (schedules.py has no GPipe order)"


def rule_tp_comm_overlap_needs_sp(s, model, cluster, job):
    if s.tp_comm_overlap and not (s.sequence_parallel and s.tp > 1):
        return "--tp-comm-overlap needs --sequence-parallel and tp > 1 (arguments.py validate_args)"


def rule_expert_ffn_divides_by_expert_tp(s, model, cluster, job):
    if model.moe and model.moe.expert_ffn % s.expert_tp:
        return f"expert ffn ({model.moe.expert_ffn}) must divide by expert tensor parallel size ({s.expert_tp})"


def rule_cp_sequence(s, model, cluster, job):
    if s.cp > 1 and job.seq_len % (2 * s.cp):
        return f"sequence length ({job.seq_len}) must divide by 2*cp ({2 * s.cp}) (arguments.py)"


def rule_uneven_split_expressible(s, model, cluster, job):
    counts = virtual_stage_layers(model, s)
    if len(counts) != s.pp * s.vpp or min(counts) < 1:
        return f"layers per virtual stage {counts} must be pp*vpp positive counts"


RULES = (rule_schedule_is_1f1b, rule_tp_comm_overlap_needs_sp,
         rule_expert_ffn_divides_by_expert_tp, rule_cp_sequence, rule_uneven_split_expressible)


# ---- flags ---------------------------------------------------------------------------------------------------------
def _moe_layer_freq(model: ModelSpec) -> str | int:
    """1 (every layer), k (every k-th) or Megatron's list expression "([0]*3+[1]*58)" for dense leading layers."""
    m = model.moe
    if m.first_dense_layers == 0:
        return m.moe_layer_freq
    pattern = [1 if model.is_moe_layer(i) else 0 for i in range(model.layers)]
    runs, prev, n = [], pattern[0], 0
    for bit in pattern:
        if bit == prev:
            n += 1
        else:
            runs.append(f"[{prev}]*{n}")
            prev, n = bit, 1
    runs.append(f"[{prev}]*{n}")
    return "(" + "+".join(runs) + ")"


def _pipeline_split_flags(model: ModelSpec, s: Strategy) -> list[tuple[str, object]]:
    """Even split: nothing (or layers per virtual stage). Uneven: first/last counts when the middle is even, the
    account-for-embedding/loss split when it is exactly that, else an explicit --pipeline-model-parallel-layout."""
    if s.pp == 1:
        return []
    counts = virtual_stage_layers(model, s)
    stages = s.pp * s.vpp
    if len(set(counts)) == 1:
        return [("--num-layers-per-virtual-pipeline-stage", counts[0])] if s.vpp > 1 else []
    if (model.layers + 2) % stages == 0 and counts == default_layer_split(model.layers, stages):
        flags = [("--account-for-embedding-in-pipeline-split", None), ("--account-for-loss-in-pipeline-split", None)]
        return flags + ([("--num-virtual-stages-per-pipeline-rank", s.vpp)] if s.vpp > 1 else [])
    middle = counts[1:-1]
    if s.vpp == 1 and len(set(middle)) <= 1:
        return [("--decoder-first-pipeline-num-layers", counts[0]), ("--decoder-last-pipeline-num-layers", counts[-1])]
    stages_text = [("E" if i == 0 else "") + f"t*{n}" + ("L" if i == stages - 1 else "") for i, n in enumerate(counts)]
    return [("--pipeline-model-parallel-layout", "|".join(stages_text))]


def megatron_args(s: Strategy, model: ModelSpec, cluster: ClusterSpec, job: JobSpec) -> list[tuple[str, object]]:
    """The ordered (flag, value) pairs; value None is a bare switch."""
    a: list[tuple[str, object]] = []
    # parallelism
    a += [("--tensor-model-parallel-size", s.tp), ("--pipeline-model-parallel-size", s.pp)]
    if s.cp > 1:
        a.append(("--context-parallel-size", s.cp))
    if s.ep > 1:
        a += [("--expert-model-parallel-size", s.ep), ("--expert-tensor-parallel-size", s.expert_tp)]
    if s.sequence_parallel and s.tp > 1:
        a.append(("--sequence-parallel", None))
    if s.tp_comm_overlap:
        a.append(("--tp-comm-overlap", None))
    a += _pipeline_split_flags(model, s)
    # batch
    a += [("--micro-batch-size", s.micro_batch), ("--global-batch-size", job.global_batch)]
    # model shape
    a += [("--num-layers", model.layers), ("--hidden-size", model.hidden), ("--num-attention-heads", model.heads)]
    a.append(("--ffn-hidden-size", model.ffn))
    if model.mla:
        m = model.mla
        a.append(("--multi-latent-attention", None))
        if m.q_lora_rank:
            a.append(("--q-lora-rank", m.q_lora_rank))
        a += [("--kv-lora-rank", m.kv_lora_rank), ("--qk-head-dim", m.qk_nope_head_dim),
              ("--qk-pos-emb-head-dim", m.qk_rope_head_dim), ("--v-head-dim", m.v_head_dim)]
    else:
        if model.kv_heads < model.heads:
            a += [("--group-query-attention", None), ("--num-query-groups", model.kv_heads)]
        if model.head_dim * model.heads != model.hidden:
            a.append(("--kv-channels", model.head_dim))
    a += [("--seq-length", job.seq_len), ("--max-position-embeddings", max(job.seq_len, model.max_position))]
    gpt_style = model.linear_bias and model.norm == "layernorm" and not model.gated_mlp
    if not gpt_style:
        a.append(("--position-embedding-type", "rope"))
    if model.gated_mlp:
        a.append(("--swiglu", None))
    elif model.extra.get("activation") == "squared-relu":
        a.append(("--squared-relu", None))
    if model.norm == "rmsnorm":
        a.append(("--normalization", "RMSNorm"))
    if not model.linear_bias:
        a.append(("--disable-bias-linear", None))
    if not model.tied_embeddings:
        a.append(("--untie-embeddings-and-output-weights", None))
    if model.moe:
        m = model.moe
        a += [("--num-experts", m.num_experts), ("--moe-router-topk", m.top_k), ("--moe-ffn-hidden-size", m.expert_ffn)]
        if m.shared_experts:
            a.append(("--moe-shared-expert-intermediate-size", m.shared_experts * (m.shared_expert_ffn or m.expert_ffn)))
        freq = _moe_layer_freq(model)
        if freq != 1:
            a.append(("--moe-layer-freq", freq))
        a += [("--moe-token-dispatcher-type", "alltoall"), ("--moe-grouped-gemm", None)]
    # recompute
    if s.recompute == "selective":
        a.append(("--recompute-activations", None))
    elif s.recompute == "full":
        a += [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", 1)]
    # precision
    if job.precision == "fp16":
        a.append(("--fp16", None))
    else:
        a.append(("--bf16", None))
        if job.precision == "fp8":
            a.append(("--fp8-format", "hybrid"))
    # data parallel: ZeRO-1 is the distributed optimizer; ZeRO-2/3 are Megatron-FSDP's optim_grads(_params)
    if s.zero >= 1:
        a.append(("--use-distributed-optimizer", None))
    if s.zero >= 2:
        a += [("--use-megatron-fsdp", None),
              ("--data-parallel-sharding-strategy", "optim_grads" if s.zero == 2 else "optim_grads_params"),
              ("--no-gradient-accumulation-fusion", None), ("--ckpt-format", "fsdp_dtensor")]
    if s.overlap_grad_reduce:
        a.append(("--overlap-grad-reduce", None))
        if s.overlap_param_gather and s.zero >= 1:
            a.append(("--overlap-param-gather", None))
    # a runnable smoke job: mock data and a null tokenizer of the model's vocabulary (replace with your data)
    a += [("--vocab-size", model.vocab), ("--tokenizer-type", "NullTokenizer"), ("--mock-data", None),
          ("--train-iters", 100), ("--lr", "1.0e-4")]
    return a


def _format_args(args: list[tuple[str, object]]) -> list[str]:
    out = []
    for flag, value in args:
        out.append(flag if value is None else f"{flag} {shlex.quote(str(value))}")
    return out


def export(s: Strategy, model: ModelSpec, cluster: ClusterSpec, job: JobSpec) -> Export:
    refuse_if_broken("megatron", RULES, s, model, cluster, job)
    nodes, per_node = nodes_and_gpus(cluster, s)
    args = _format_args(megatron_args(s, model, cluster, job))
    env = []
    if (s.tp > 1 or s.cp > 1) and s.zero < 2:      # needed for TP/CP comm-compute ordering before Blackwell;
        env.append("export CUDA_DEVICE_MAX_CONNECTIONS=1")  # Megatron-FSDP asks for it unset
    lines = ["#!/usr/bin/env bash",
             f"# Megatron-LM pretrain_gpt.py for {model.name}: {s.describe()} on {nodes} x {per_node} GPUs "
             f"({microbatches(s, job)} micro-batches per iteration).",
             "# Generated by paraplan. Run on every node from the Megatron-LM checkout:",
             "#   NODE_RANK=<0..nodes-1> MASTER_ADDR=<node 0 host> bash " + SCRIPT,
             "# --mock-data/NullTokenizer make it a runnable smoke job: replace them with --data-path and your tokenizer.",
             "set -euo pipefail", *env,
             "torchrun \\",
             f"  --nproc_per_node {per_node} --nnodes {nodes} --node_rank ${{NODE_RANK:-0}} \\",
             "  --master_addr ${MASTER_ADDR:-localhost} --master_port ${MASTER_PORT:-6000} \\",
             "  pretrain_gpt.py \\"]
    lines += [f"  {arg} \\" for arg in args[:-1]] + [f"  {args[-1]}"]
    launch = f"NODE_RANK=0 MASTER_ADDR=localhost bash {SCRIPT}" if nodes == 1 else \
        f"NODE_RANK=<0..{nodes - 1}> MASTER_ADDR=<node 0 host> bash {SCRIPT}"
    return Export("megatron", {SCRIPT: "\n".join(lines) + "\n"}, launch,
                  notes=["run from a Megatron-LM checkout (pretrain_gpt.py); replace --mock-data with --data-path"],
                  engine_version=ENGINE_VERSION)
