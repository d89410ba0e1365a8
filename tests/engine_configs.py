"""Build the engines' own configuration objects from paraplan's exports, so that their validation judges them.

Megatron-LM: megatron-core's TransformerConfig (a ModelParallelConfig), MLATransformerConfig for MLA models, and
DistributedDataParallelConfig, filled from the exported pretrain_gpt.py flags the way Megatron-LM's
megatron/training/argument_utils.py (core_transformer_config_from_args) and arguments.py do. megatron/training itself
is not in the megatron-core wheel, so the few rules of arguments.py validate_args that the core classes do not hold
(batch divisibility, --max-position-embeddings >= --seq-length, --overlap-param-gather needs the distributed
optimizer) are checked here, each citing its source.
torchtitan: torchtitan's ConfigManager loads the exported module (--module/--config), then ParallelDims and the
pipeline metadata functions of torchtitan/distributed judge the parallelism as the trainer would.
DeepSpeed: deepspeed.runtime.config.DeepSpeedConfig parses ds_config.json with an mpu reporting the DP size."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def parse_megatron_script(text: str) -> dict[str, object]:
    """Flags after pretrain_gpt.py in the exported script: flag -> value (True for a bare switch)."""
    body = text.rsplit("pretrain_gpt.py", 1)[1].replace("\\\n", " ")
    tokens = shlex.split(body)
    flags: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        assert flag.startswith("--"), flag
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            flags[flag] = tokens[i + 1]
            i += 2
        else:
            flags[flag] = True
            i += 1
    return flags


def megatron_configs(flags: dict[str, object], world_size: int):
    """(TransformerConfig, DistributedDataParallelConfig) from the flags; raises what megatron-core raises."""
    import torch
    import torch.nn.functional as F
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    def num(flag, default=None):
        return int(flags[flag]) if flag in flags else default

    tp, pp, cp = num("--tensor-model-parallel-size", 1), num("--pipeline-model-parallel-size", 1), num("--context-parallel-size", 1)
    layers = num("--num-layers")
    vpp = None
    if "--num-layers-per-virtual-pipeline-stage" in flags:
        # arguments.py: the layers must split evenly over pp, then into chunks of this size
        assert layers % pp == 0, "num_layers must divide by pipeline size with --num-layers-per-virtual-pipeline-stage"
        per_rank = layers // pp
        n = num("--num-layers-per-virtual-pipeline-stage")
        assert per_rank % n == 0, "layers per rank must divide by layers per virtual stage"
        vpp = per_rank // n
    elif "--num-virtual-stages-per-pipeline-rank" in flags:
        vpp = num("--num-virtual-stages-per-pipeline-rank")
    dtype = torch.float16 if "--fp16" in flags else torch.bfloat16
    kw = dict(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
        expert_model_parallel_size=num("--expert-model-parallel-size", 1),
        expert_tensor_parallel_size=num("--expert-tensor-parallel-size"),
        sequence_parallel="--sequence-parallel" in flags, tp_comm_overlap="--tp-comm-overlap" in flags,
        virtual_pipeline_model_parallel_size=vpp,
        num_layers_in_first_pipeline_stage=num("--decoder-first-pipeline-num-layers"),
        num_layers_in_last_pipeline_stage=num("--decoder-last-pipeline-num-layers"),
        account_for_embedding_in_pipeline_split="--account-for-embedding-in-pipeline-split" in flags,
        account_for_loss_in_pipeline_split="--account-for-loss-in-pipeline-split" in flags,
        pipeline_model_parallel_layout=flags.get("--pipeline-model-parallel-layout"),
        num_layers=layers, hidden_size=num("--hidden-size"), num_attention_heads=num("--num-attention-heads"),
        ffn_hidden_size=num("--ffn-hidden-size"),
        # argument_utils.py:330: --num-query-groups counts only with --group-query-attention
        num_query_groups=num("--num-query-groups") if "--group-query-attention" in flags else None,
        kv_channels=num("--kv-channels"),
        gated_linear_unit="--swiglu" in flags,
        normalization=flags.get("--normalization", "LayerNorm"),
        add_bias_linear="--disable-bias-linear" not in flags,
        num_moe_experts=num("--num-experts"), moe_router_topk=num("--moe-router-topk", 2),
        moe_ffn_hidden_size=num("--moe-ffn-hidden-size"),
        moe_shared_expert_intermediate_size=num("--moe-shared-expert-intermediate-size"),
        moe_grouped_gemm="--moe-grouped-gemm" in flags,
        moe_token_dispatcher_type=flags.get("--moe-token-dispatcher-type", "allgather"),
        recompute_granularity="selective" if "--recompute-activations" in flags else flags.get("--recompute-granularity"),
        recompute_method=flags.get("--recompute-method"), recompute_num_layers=num("--recompute-num-layers"),
        bf16="--bf16" in flags, fp16="--fp16" in flags, params_dtype=dtype, pipeline_dtype=dtype,
        fp8=flags.get("--fp8-format"),
        gradient_accumulation_fusion="--no-gradient-accumulation-fusion" not in flags,
    )
    if "--moe-layer-freq" in flags:
        freq = str(flags["--moe-layer-freq"])
        # arguments.py moe_freq_type: an int, or a Python list expression evaluated to a per-layer 0/1 pattern
        kw["moe_layer_freq"] = eval(freq, {"__builtins__": {}}) if freq.startswith(("(", "[")) else int(freq)  # noqa: S307
    if kw["gated_linear_unit"]:
        kw["activation_func"] = F.silu
    elif "--squared-relu" in flags:
        kw["activation_func"] = lambda x: torch.pow(F.relu(x), 2)
    cls = TransformerConfig
    if "--multi-latent-attention" in flags:
        cls = MLATransformerConfig
        kw.update(q_lora_rank=num("--q-lora-rank"), kv_lora_rank=num("--kv-lora-rank"),
                  qk_head_dim=num("--qk-head-dim"), qk_pos_emb_head_dim=num("--qk-pos-emb-head-dim"),
                  v_head_dim=num("--v-head-dim"))
    transformer = cls(**kw)
    ddp = DistributedDataParallelConfig(
        use_distributed_optimizer="--use-distributed-optimizer" in flags,
        overlap_grad_reduce="--overlap-grad-reduce" in flags, overlap_param_gather="--overlap-param-gather" in flags,
        use_megatron_fsdp="--use-megatron-fsdp" in flags,
        data_parallel_sharding_strategy=flags.get("--data-parallel-sharding-strategy", "no_shard"))
    # arguments.py validate_args rules that live outside megatron-core's config classes
    assert world_size % (tp * pp * cp) == 0, "world size must divide by tp*pp*cp"
    dp = world_size // (tp * pp * cp)
    from megatron.core.num_microbatches_calculator import ConstantNumMicroBatchesCalculator
    ConstantNumMicroBatchesCalculator(num("--global-batch-size"), num("--micro-batch-size"), dp, None, 0)
    assert num("--max-position-embeddings") >= num("--seq-length"), "--max-position-embeddings < --seq-length"
    if ddp.overlap_param_gather:
        assert ddp.use_distributed_optimizer and ddp.overlap_grad_reduce, "--overlap-param-gather needs both"
    if cp > 1:
        assert num("--seq-length") % (2 * cp) == 0, "seq_length must divide by 2*cp"
    return transformer, ddp


def torchtitan_config(folder: Path, module: str, function: str, world_size: int):
    """Load the exported module with torchtitan's ConfigManager and judge its parallelism with ParallelDims and the
    pipeline helpers, as trainer.py does before building the model."""
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims
    from torchtitan.distributed import pipeline_parallel as ttpp

    sys.path.insert(0, str(folder))
    try:
        sys.modules.pop(module, None)
        config = ConfigManager().parse_args(["--module", module, "--config", function])
    finally:
        sys.path.remove(str(folder))
    par, training = config.parallelism, config.training
    dims = ParallelDims.from_config(par, world_size)
    # trainer.py: global batch divisible by local batch * (dp_replicate * dp_shard); seq_len divisor
    batch_degree = dims.dp_replicate * dims.dp_shard
    assert training.global_batch_size % (training.local_batch_size * batch_degree) == 0
    divisor = (dims.tp if par.enable_sequence_parallel else 1) * (2 * dims.cp if dims.cp > 1 else 1)
    assert training.seq_len % divisor == 0, f"seq_len % {divisor}"
    if dims.ep > 1:
        assert (dims.dp_shard * dims.cp * dims.tp) % dims.ep == 0, "efsdp = dp_shard*cp*tp/ep must be whole"
    if dims.pp > 1:
        num_stages, num_layers, _, _ = ttpp._get_pipeline_metadata(dims, par, config.model_spec.model)
        parts = par.module_fqns_per_model_part
        assert len(parts) % dims.pp == 0, "stages must divide over pp ranks"
        schedule = ttpp.get_schedule_class(par.pipeline_parallel_schedule)
        per_rank = len(parts) // dims.pp
        if issubclass(schedule, ttpp.PipelineScheduleSingle):
            assert per_rank == 1, "single-stage schedule needs one stage per rank"
        else:
            assert per_rank >= 2, "looped schedule needs >= 2 stages per rank"
        layers = [n for p in parts for n in p if n.startswith("layers.")]
        assert layers == [f"layers.{i}" for i in range(num_layers)], "every layer exactly once, in order"
        assert training.local_batch_size % par.pipeline_parallel_microbatch_size == 0
    return config, dims


def torchtitan_params(config) -> int:
    """Parameters of the model torchtitan builds from the config (on the meta device: shapes only)."""
    import torch
    with torch.device("meta"):
        model = config.model_spec.model.build()
    return sum(p.numel() for p in model.parameters())


def deepspeed_config(cfg: dict, dp: int):
    """deepspeed.runtime.config.DeepSpeedConfig of the exported JSON; its world size is the DP size (an mpu)."""
    import deepspeed.runtime.config as dsc

    class DataParallelOnly:
        def get_data_parallel_world_size(self):
            return dp

        def get_data_parallel_rank(self):
            return 0

    # DeepSpeedConfig asks deepspeed.comm for the rank first and falls back to world size 1 when no process group
    # exists; initialising one would JIT-compile DeepSpeed's CPU comm op (minutes). The rank is all it asks.
    real = dsc.dist.get_rank
    dsc.dist.get_rank = lambda *a, **k: 0
    try:
        return dsc.DeepSpeedConfig(cfg, mpu=DataParallelOnly())
    finally:
        dsc.dist.get_rank = real


def main(argv: list[str]) -> int:
    """`python tests/engine_configs.py ENGINE CASES.json`: judge every case with that engine's own code and print one
    JSON object {case id: "ok" | "error: ..."}. Run in a subprocess so that importing the engines (their logging,
    accelerator detection, warnings) cannot leak into the rest of the test session."""
    import json
    import warnings
    warnings.filterwarnings("ignore")
    import logging
    logging.disable(logging.WARNING)
    engine, cases = argv[0], json.loads(Path(argv[1]).read_text())
    out = {}
    for case in cases:
        try:
            if engine == "megatron":
                megatron_configs(parse_megatron_script(case["text"]), case["world_size"])
            elif engine == "torchtitan":
                config, _ = torchtitan_config(Path(case["folder"]), case["module"], case["function"],
                                              case["world_size"])
                if case.get("params"):       # the model torchtitan builds is the one paraplan estimated
                    built = torchtitan_params(config)
                    assert abs(built / case["params"] - 1) < case.get("params_rtol", 0.005), \
                        f"torchtitan builds {built:,} parameters, paraplan counts {case['params']:,}"
            elif engine == "deepspeed":
                deepspeed_config(json.loads(case["text"]), case["dp"])
            out[case["id"]] = "ok"
        except Exception as exc:  # noqa: BLE001 - report whatever the engine raised
            out[case["id"]] = f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    print("RESULTS " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main(sys.argv[1:]))
