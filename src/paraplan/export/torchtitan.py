"""torchtitan (the PyPI release, 0.3.x): a Python job config for a plan and the torchrun command that launches it.

Since v0.3 (PR #2386, "Config System Refactor: TOML to Python Dataclass Registry") a torchtitan run is configured
by a function returning `Trainer.Config`, chosen with `--module <python module> --config <function>`; TOML job files
and `--job.config_file` are gone (torchtitan/config/manager.py). So the export is a module `paraplan_torchtitan.py`
whose function starts from torchtitan's own config for the matching model flavor (its model definition, optimizer,
data loader) and sets what the plan decides: batch sizes, ParallelismConfig, activation checkpointing.

Mapping (torchtitan/config/configs.py, distributed/parallel_dims.py, distributed/pipeline_parallel.py, trainer.py):
ZeRO-3 = FSDP2 (`data_parallel_shard_degree` = dp); ZeRO-2 = FSDP2 with `fsdp_reshard_after_forward = "never"`;
ZeRO-0 = DDP (`data_parallel_replicate_degree` = dp); world = dp_replicate * dp_shard * cp * tp * pp. Without PP one
step runs global / (local_batch_size * dp) accumulation steps of `local_batch_size` = mbs; with PP the local batch
is global / dp, cut into micro-batches of `pipeline_parallel_microbatch_size` = mbs. The pipeline split is given
explicitly (`module_fqns_per_model_part`) so torchtitan runs the stages paraplan simulated."""
from __future__ import annotations

from paraplan.export.common import Export, microbatches, nodes_and_gpus, refuse_if_broken, virtual_stage_layers
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Strategy

ENGINE_VERSION = "torchtitan 0.3.0 (PyPI)"
MODULE = "paraplan_torchtitan"
FUNCTION = "paraplan_job"

# torchtitan 0.3.0 config_registry functions and the model shapes they build
# (torchtitan/models/llama3/__init__.py _8b/_70b/_405b, models/deepseek_v3/__init__.py _671b):
# (layers, hidden, heads, kv_heads, ffn, vocab, experts) -> (module, config function, model flavor to swap in).
# llama3_405b's recipe turns on float8 (torchao) and compile; a bf16 plan starts from the 70B recipe (same vocabulary
# and tokenizer family) with the 405B model of torchtitan's own registry.
FLAVORS: dict[tuple, tuple[str, str, str | None]] = {
    (32, 4096, 32, 8, 14336, 128256, 0): ("llama3", "llama3_8b", None),
    (80, 8192, 64, 8, 28672, 128256, 0): ("llama3", "llama3_70b", None),
    (126, 16384, 128, 8, 53248, 128256, 0): ("llama3", "llama3_70b", "405B"),
    (61, 7168, 128, 128, 18432, 129280, 256): ("deepseek_v3", "deepseek_v3_671b", None),
}
SCHEDULES = {"1f1b": "1F1B", "gpipe": "GPipe", "interleaved": "Interleaved1F1B"}


def flavor_of(model: ModelSpec) -> tuple[str, str, str | None] | None:
    """torchtitan's recipe for this model: a registry flavor of its shape, else ("llama3", "llama3_8b", "custom") for
    any Llama-architecture model (built with torchtitan's llama3 builders at the model's own sizes), else None."""
    key = (model.layers, model.hidden, model.heads, model.kv_heads, model.ffn, model.vocab,
           model.moe.num_experts if model.moe else 0)
    if key in FLAVORS:
        return FLAVORS[key]
    return ("llama3", "llama3_8b", "custom") if _llama_architecture(model) is None else None


def _qkv_bias(model: ModelSpec) -> bool:
    """Qwen2 has q/k/v biases: hf_config marks them (extra.qkv_bias); the catalog's qwen2 presets model them as no
    bias (models.yaml), so they are known by name."""
    return bool(model.extra.get("qkv_bias")) or model.name.lower().startswith(("qwen2", "qwen-2"))


def _llama_architecture(model: ModelSpec) -> str | None:
    """None when torchtitan's llama3 model class can hold this model, else what it lacks."""
    lacks = [what for what, bad in (("mixture of experts", model.moe), ("multi-latent attention", model.mla),
                                    ("a gated (SwiGLU) MLP", not model.gated_mlp), ("RMSNorm", model.norm != "rmsnorm"),
                                    ("no linear biases", model.linear_bias or _qkv_bias(model)),
                                    ("an untied LM head", model.tied_embeddings),
                                    ("head_dim = hidden / heads", model.head_dim * model.heads != model.hidden)) if bad]
    return ", ".join(lacks) if lacks else None


# ---- rules ---------------------------------------------------------------------------------------------------------
def rule_model_has_flavor(s, model, cluster, job):
    if flavor_of(model) is None:
        known = ", ".join(f"{m}.{f if swap is None else swap}" for m, f, swap in FLAVORS.values())
        return (f"torchtitan has no model config for {model.name} (registry recipes: {known}; the llama3 class would "
                f"need {_llama_architecture(model)})")


def rule_zero_is_ddp_or_fsdp(s, model, cluster, job):
    if s.zero == 1:
        return "zero=1: torchtitan replicates (DDP, zero=0) or shards with FSDP2 (zero=3; zero=2 as reshard 'never')"


def rule_precision_bf16(s, model, cluster, job):
    if job.precision != "bf16":
        return (f"precision {job.precision}: torchtitan trains in bf16 mixed precision here (fp16 is not offered; "
                "paraplan does not export float8 converters yet)")


def rule_async_tp_needs_tp(s, model, cluster, job):
    if s.tp_comm_overlap and s.tp == 1:
        return "tp_comm_overlap needs tp > 1 (async TP)"


def rule_stage_split(s, model, cluster, job):
    counts = virtual_stage_layers(model, s)
    if s.pp > 1 and min(counts) < 1:
        return f"every pipeline stage needs a layer, got {counts}"


RULES = (rule_model_has_flavor, rule_zero_is_ddp_or_fsdp, rule_precision_bf16, rule_async_tp_needs_tp,
         rule_stage_split)


def module_fqns_per_model_part(model: ModelSpec, s: Strategy) -> list[list[str]]:
    """Module names of each virtual stage in model order (torchtitan's decoder: tok_embeddings, layers.i, norm,
    lm_head), with the layer counts paraplan simulated."""
    parts, first = [], 0
    counts = virtual_stage_layers(model, s)
    for i, n in enumerate(counts):
        names = [f"layers.{j}" for j in range(first, first + n)]
        first += n
        if i == 0:
            names.insert(0, "tok_embeddings")
        if i == len(counts) - 1:
            names += ["norm", "lm_head"]
        parts.append(names)
    return parts


def job_values(s: Strategy, model: ModelSpec, job: JobSpec) -> dict:
    """The values the config function sets, by torchtitan section and field."""
    training = {"global_batch_size": job.global_batch, "seq_len": job.seq_len, "steps": 100}
    training["local_batch_size"] = job.global_batch // s.dp if s.pp > 1 else s.micro_batch
    if s.pp > 1 or s.ep > 1:
        training["disable_cuda_graphs"] = True    # trainer.py: CUDA graphs do not support PP (nor most EP backends)
    par = {"data_parallel_replicate_degree": s.dp if s.zero == 0 else 1,
           "data_parallel_shard_degree": 1 if s.zero == 0 else s.dp,
           "tensor_parallel_degree": s.tp, "enable_sequence_parallel": bool(s.sequence_parallel or s.tp == 1),
           "context_parallel_degree": s.cp, "expert_parallel_degree": s.ep,
           "pipeline_parallel_degree": s.pp}
    if s.zero == 2:
        par["fsdp_reshard_after_forward"] = "never"
    if s.pp > 1:
        par["pipeline_parallel_schedule"] = SCHEDULES["interleaved" if s.vpp > 1 else s.schedule]
        par["pipeline_parallel_microbatch_size"] = s.micro_batch
        par["module_fqns_per_model_part"] = module_fqns_per_model_part(model, s)
    return {"training": training, "parallelism": par,
            "activation_checkpoint": {"none": None, "selective": "SelectiveAC", "full": "FullAC"}[s.recompute],
            "async_tp": bool(s.tp_comm_overlap)}


def config_module(s: Strategy, model: ModelSpec, job: JobSpec, launch: str) -> str:
    module, function, swap = flavor_of(model)
    v = job_values(s, model, job)
    lines = [f'"""torchtitan {ENGINE_VERSION.split()[1]} job config generated by paraplan: {model.name}, {s.describe()}.',
             "", f"Launch: {launch}", '"""',
             "from torchtitan.config import CompileConfig, ParallelismConfig",
             "from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC",
             f"from torchtitan.models.{module}.config_registry import {function} as base_config",
             *([f"from torchtitan.models.{module} import model_registry"] if swap and swap != "custom" else []),
             *(_custom_model_lines(model, job) if swap == "custom" else []),
             "", "", f"def {FUNCTION}():",
             f'    """{function}{f" ({swap} model)" if swap and swap != "custom" else (f" ({model.name} model)" if swap else "")} with the plan\'s batch, parallelism and activation checkpointing."""',
             "    config = base_config()"]
    if swap == "custom":
        lines.append("    config.model_spec = paraplan_model_spec()")
        lines.append("    config.loss.loss_fn.global_vocab_size = decoder_vocab_size(config.model_spec)")
    elif swap:
        lines.append(f"    config.model_spec = model_registry({swap!r})   # the {swap} model, bf16 (no float8 converter)")
    for key, value in v["training"].items():
        lines.append(f"    config.training.{key} = {value!r}")
    lines.append("    config.parallelism = ParallelismConfig(")
    for key, value in v["parallelism"].items():
        if key == "module_fqns_per_model_part":     # one virtual stage per line
            lines.append(f"        {key}=[")
            lines += [f"            {stage!r}," for stage in value]
            lines.append("        ],")
        else:
            lines.append(f"        {key}={value!r},")
    lines.append("    )")
    ac = v["activation_checkpoint"]
    lines.append(f"    config.activation_checkpoint = {ac + '.Config()' if ac else 'None'}")
    if v["async_tp"]:
        lines.append("    config.compile = CompileConfig(enable=True, enable_async_tensor_parallel=True)")
    lines.append("    return config")
    return "\n".join(lines) + "\n"


def _custom_model_lines(model: ModelSpec, job: JobSpec) -> list[str]:
    """A model spec of torchtitan's llama3 class at this model's sizes, built the way torchtitan's own llama3 flavors
    are (torchtitan/models/llama3/__init__.py: _build_llama3_layers, the same inits; RoPE without llama3 scaling)."""
    theta = float(model.extra.get("rope_theta", 10000.0))
    return ["from torchtitan.models import llama3 as llama3_family",
            "from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm",
            "from torchtitan.models.common.config_utils import decoder_vocab_size",
            "", "",
            "def paraplan_model_spec():",
            f'    """torchtitan\'s llama3 model class at {model.name}\'s sizes, from torchtitan\'s own llama3 builders."""',
            f"    dim, n_heads, vocab = {model.hidden}, {model.heads}, {model.vocab}",
            "    model = llama3_family.Llama3Model.Config(",
            "        dim=dim,",
            "        vocab_size=vocab,",
            "        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim,",
            "                                        param_init=llama3_family._EMBEDDING_INIT),",
            "        norm=RMSNorm.Config(normalized_shape=dim, param_init=llama3_family._NORM_INIT),",
            "        lm_head=Linear.Config(in_features=dim, out_features=vocab,",
            "                              param_init=llama3_family._output_linear_init(dim)),",
            "        layers=llama3_family._build_llama3_layers(",
            f"            fuse_qkv=True, n_layers={model.layers}, dim=dim, n_heads=n_heads, n_kv_heads={model.kv_heads},",
            f"            hidden_dim={model.ffn},",
            f"            rope=ComplexRoPE.Config(dim=dim // n_heads, max_seq_len={max(job.seq_len, model.max_position)}, "
            f"theta={theta!r}),",
            '            attn_backend="flex",',
            "        ),",
            "    )",
            '    spec = llama3_family.model_registry("8B")',
            '    spec.model, spec.flavor = model, "paraplan"',
            "    return spec"]


def export(s: Strategy, model: ModelSpec, cluster: ClusterSpec, job: JobSpec) -> Export:
    refuse_if_broken("torchtitan", RULES, s, model, cluster, job)
    nodes, per_node = nodes_and_gpus(cluster, s)
    rdzv = "localhost:0" if nodes == 1 else "<node-0 host>:29500"
    launch = (f"PYTHONPATH=. torchrun --nnodes {nodes} --nproc_per_node {per_node} --rdzv_backend c10d "
              f"--rdzv_endpoint {rdzv} -m torchtitan.train --module {MODULE} --config {FUNCTION}")
    notes = [f"{microbatches(s, job)} micro-batches of {s.micro_batch} per data-parallel rank per step",
             "the base config's hf_assets_path and dataset are torchtitan's defaults: point them at your tokenizer/data"]
    return Export("torchtitan", {f"{MODULE}.py": config_module(s, model, job, launch)}, launch, notes,
                  ENGINE_VERSION)
