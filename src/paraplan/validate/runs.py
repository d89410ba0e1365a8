"""Measured-runs CSV (format of data/validation/README.md) -> specs, filling what a row leaves empty with the
framework's defaults and saying so."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from paraplan.errors import ParaplanError
from paraplan.frameworks import strategy_defaults
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, MoESpec, Strategy
from paraplan.specs.job import FRAMEWORKS, JOB_PRECISIONS
from paraplan.specs.loaders import cluster_from_links, preset_named, resolve_gpu_name
from paraplan.specs.strategy import RECOMPUTE_MODES, framework_violation, interleaved_groups_ok

REQUIRED = ("id", "layers", "hidden", "heads", "ffn", "vocab", "seq_len", "global_batch", "tp", "pp", "dp", "gpu",
            "num_gpus")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass
class RunCase:
    id: str
    source: str
    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    strategy: Strategy
    measured_iter_time_s: float | None
    assumptions: list[str] = field(default_factory=list)


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ParaplanError(f"runs file {str(path)!r} not found")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ParaplanError(f"runs file {str(path)!r} is not a readable CSV: {exc}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ParaplanError(f"runs file {str(path)!r} lacks required columns {', '.join(missing)} "
                            f"(format: data/validation/README.md)")
    return rows


def _int(row: dict, key: str, default: int | None = None) -> int:
    raw = (row.get(key) or "").strip()
    if not raw:
        if default is None:
            raise ParaplanError(f"row {row.get('id')!r}: column {key} is empty; a positive integer is required")
        return default
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        raise ParaplanError(f"row {row.get('id')!r}: column {key}={raw!r} is not an integer") from None
    if value <= 0 or value != float(raw):
        raise ParaplanError(f"row {row.get('id')!r}: column {key}={raw!r} must be a positive integer")
    return value


def _float(row: dict, key: str) -> float | None:
    raw = (row.get(key) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ParaplanError(f"row {row.get('id')!r}: column {key}={raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ParaplanError(f"row {row.get('id')!r}: column {key}={raw!r} must be a positive finite number")
    return value


def _bool(row: dict, key: str) -> bool | None:
    raw = (row.get(key) or "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ParaplanError(f"row {row.get('id')!r}: column {key}={raw!r} must be true or false")


# other spellings of the format's enumerated values, as published tables print them; each is read as the value
# it names and said in the row's assumptions (case alone is not worth a note)
FRAMEWORK_SPELLINGS = {"megatron": "megatron-lm", "megatron-core": "megatron-lm", "mcore": "megatron-lm",
                       "megatron-bridge": "nemo", "nemo-megatron": "nemo", "megatron-ds": "megatron-deepspeed",
                       # JAX/XLA stacks share MaxText's compiler-fused kernels and conventions
                       "pax": "maxtext", "paxml": "maxtext", "praxis": "maxtext", "t5x": "maxtext",
                       "levanter": "maxtext",
                       # eager PyTorch FSDP stacks: torchtitan's conventions (FSDP, SDPA attention, unfused ops)
                       "fsdp": "torchtitan", "fsdp2": "torchtitan", "pytorch-fsdp": "torchtitan",
                       "torch-fsdp": "torchtitan", "llm-foundry": "torchtitan", "llmfoundry": "torchtitan",
                       "composer": "torchtitan"}
PRECISION_SPELLINGS = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "bf16-mixed": "bf16",
                       "16-mixed": "fp16", "amp-bf16": "bf16", "amp-fp16": "fp16"}
# ZeRO stages as engines name them: ZeRO-N, Megatron's distributed optimizer (1), FSDP's sharding strategies
# (SHARD_GRAD_OP = 2, FULL_SHARD / HYBRID_SHARD = 3), plain DDP (0)
ZERO_SPELLINGS = {"ddp": 0, "none": 0, "no": 0, "off": 0, "distributed-optimizer": 1, "distopt": 1, "dist-opt": 1,
                  "shard-grad-op": 2, "fsdp": 3, "full-shard": 3, "hybrid-shard": 3, "hsdp": 3}
# Megatron's --recompute-method uniform / block are both full recompute (--recompute-granularity full)
RECOMPUTE_SPELLINGS = {"uniform": "full", "block": "full", "no": "none", "off": "none", "false": "none"}


def _spelled(rid: str, row: dict, column: str, allowed, spellings: dict, assumed: list[str]) -> str:
    """The row's value of an enumerated column, lower-cased, or its canonical value; "" when empty. fp8 recipe
    names (fp8-cs, fp8-mx, mxfp8, ...) are fp8: the format has no column for the recipe."""
    given = (row.get(column) or "").strip()
    value = given.lower().replace("_", "-")
    if not value or value in allowed:
        return value
    canonical = spellings.get(value)
    if canonical is None and column == "precision" and "fp8" in value:
        canonical = "fp8"
    if canonical is None and column == "precision" and "fp4" in value:
        canonical = "fp8"       # NVFP4 / MXFP4 recipes: paraplan has no fp4 rate; the fp8 one is the nearest
    if canonical is None:
        raise ParaplanError(f"row {rid!r}: column {column}={given!r} unknown; allowed: {', '.join(allowed)}")
    assumed.append(f"{column}={canonical} (given {given!r})")
    return canonical


def _with_interleaved_group(s: Strategy, global_batch: int, assumed: list[str]) -> Strategy:
    """An interleaved run whose micro-batches per pipeline are no multiple of pp ran with Megatron's
    microbatch_group_size_per_vp_stage set: the smallest group from pp up that leaves no last group shorter than
    pp (the schedule deadlocks on one), said. Unchanged where the default (pp) serves or no group would (the
    strategy's rules then name what is wrong)."""
    m = s.num_microbatches(global_batch)
    if s.vpp < 2 or s.pp < 2 or global_batch % (s.dp * s.micro_batch) or m % s.pp == 0 or m < s.pp:
        return s
    group = next(g for g in range(s.pp, m + 1) if interleaved_groups_ok(m, s.pp, g))
    assumed.append(f"microbatch_group_size_per_vp_stage={group} ({m} micro-batches per pipeline are no multiple "
                   f"of pp={s.pp})")
    return replace(s, microbatch_group_size=group)


def _zero_stage(rid: str, row: dict, assumed: list[str]) -> int | None:
    """The row's ZeRO stage: 0-3, or a name an engine prints for one (ZeRO-2, zero3, FSDP, distributed
    optimizer, ...), said in the assumptions; None when empty."""
    given = (row.get("zero") or "").strip()
    if not given:
        return None
    if given in ("0", "1", "2", "3", "0.0", "1.0", "2.0", "3.0"):
        return int(float(given))
    value = given.lower().replace("_", "-").replace(" ", "-")
    stage = ZERO_SPELLINGS.get(value)
    digits = value.removeprefix("zero").lstrip("-")
    if stage is None and value.startswith("zero") and digits in ("0", "1", "2", "3"):
        stage = int(digits)
    if stage is None:
        raise ParaplanError(f"row {rid!r}: column zero={given!r} must be 0, 1, 2 or 3 (or ZeRO-N, ddp, "
                            f"distributed-optimizer, shard-grad-op, fsdp)")
    assumed.append(f"zero={stage} (given {given!r})")
    return stage


def _data_parallel(rid: str, row: dict, values: dict, assumed: list[str]) -> int:
    """The row's dp, or what the GPU count leaves for it when empty. Some sources print a data-parallel size that
    counts the context-parallel ranks (Megatron's "data-parallel size" before CP existed, some tables since):
    tp*pp*dp = GPUs with cp > 1 is read that way, and said."""
    num_gpus, model_parallel = _int(row, "num_gpus"), values["tp"] * values["pp"] * values["cp"]
    if not (row.get("dp") or "").strip():
        if num_gpus % model_parallel:
            raise ParaplanError(f"row {rid!r}: dp is empty and num_gpus={num_gpus} is not a multiple of "
                                f"tp*pp*cp={model_parallel}")
        assumed.append(f"dp={num_gpus // model_parallel} (num_gpus / (tp*pp*cp))")
        return num_gpus // model_parallel
    dp = _int(row, "dp")
    cp = values["cp"]
    if cp > 1 and values["tp"] * values["pp"] * dp == num_gpus and dp % cp == 0:
        assumed.append(f"dp={dp // cp} (the row's dp={dp} counts the cp={cp} ranks: tp*pp*dp = num_gpus)")
        return dp // cp
    return dp


def _default_ffn(row: dict, hidden: int, gated: bool, assumed: list[str]) -> int:
    """The MLP size of a dense row that leaves `ffn` empty: the named preset's when its hidden size agrees, else
    Megatron-LM's default (arguments.py: 4*hidden, or int(4*hidden*2/3 / 64)*64 with SwiGLU)."""
    preset = preset_named(row.get("model") or "")
    if preset and preset.hidden == hidden and preset.gated_mlp == gated and not preset.moe:
        assumed.append(f"ffn={preset.ffn} (preset {preset.name})")
        return preset.ffn
    ffn = int(4 * hidden * 2 / 3 / 64) * 64 if gated else 4 * hidden
    assumed.append(f"ffn={ffn} (Megatron-LM default for {'SwiGLU' if gated else 'GELU'} MLPs: "
                   f"{'int(4*hidden*2/3/64)*64' if gated else '4*hidden'})")
    return ffn


def case_from_row(row: dict) -> RunCase:
    rid = row.get("id") or "?"
    assumed: list[str] = []
    framework = _spelled(rid, row, "framework", FRAMEWORKS, FRAMEWORK_SPELLINGS, assumed) or "other"
    gated = _bool(row, "gated_mlp")
    if gated is None:
        gated = False
        assumed.append("gated_mlp=false")
    num_experts = _float(row, "num_experts")
    moe = None
    if num_experts and num_experts > 1:
        moe = MoESpec(num_experts=_int(row, "num_experts"), top_k=_int(row, "top_k"),
                      expert_ffn=_int(row, "expert_ffn") if (row.get("expert_ffn") or "").strip() else _int(row, "ffn"))
    hidden, heads = _int(row, "hidden"), _int(row, "heads")
    if moe and not (row.get("ffn") or "").strip():
        ffn = moe.expert_ffn                 # every layer is MoE: the dense size is only a placeholder
        assumed.append("all layers MoE (ffn empty)")
    elif not (row.get("ffn") or "").strip():
        ffn = _default_ffn(row, hidden, gated, assumed)
    else:
        ffn = _int(row, "ffn")
    head_dim = _int(row, "head_dim") if (row.get("head_dim") or "").strip() else None
    if head_dim is None:
        # the format has no head_dim column: a model whose heads are wider or narrower than hidden/heads (Qwen3,
        # gpt-oss) is recognised by its name when the preset's shape agrees with the row's
        preset = preset_named(row.get("model") or "")
        if preset and (preset.hidden, preset.heads) == (hidden, heads) and preset.head_dim != hidden // heads:
            head_dim = preset.head_dim
            assumed.append(f"head_dim={head_dim} (preset {preset.name})")
    model = ModelSpec(name=row.get("model") or rid, layers=_int(row, "layers"), hidden=hidden,
                      heads=heads, kv_heads=_int(row, "kv_heads", heads), head_dim=head_dim,
                      ffn=ffn, vocab=_int(row, "vocab"), gated_mlp=gated, moe=moe,
                      norm="rmsnorm" if gated else "layernorm", linear_bias=not gated,
                      max_position=_int(row, "seq_len"))
    precision = _spelled(rid, row, "precision", JOB_PRECISIONS, PRECISION_SPELLINGS, assumed)
    if not precision:
        precision = "bf16"
        assumed.append("precision=bf16")
    job = JobSpec(global_batch=_int(row, "global_batch"), seq_len=_int(row, "seq_len"), precision=precision,
                  framework=framework)
    values = {"tp": _int(row, "tp"), "pp": _int(row, "pp"), "cp": _int(row, "cp", 1),
              "ep": _int(row, "ep", 1), "micro_batch": _int(row, "micro_batch", 1)}
    values["dp"] = _data_parallel(rid, row, values, assumed)
    if not (row.get("micro_batch") or "").strip():
        assumed.append("micro_batch=1")
    vpp = (row.get("vpp") or "").strip()
    values["vpp"] = _int(row, "vpp") if vpp else 1
    if not vpp:
        assumed.append("vpp=1")
    given_sp = _bool(row, "sequence_parallel")
    filled = strategy_defaults(framework, values["tp"], precision, given_sp)
    sp = filled["sequence_parallel"]
    if given_sp is None:
        assumed.append(f"sequence_parallel={str(sp).lower()} ({framework} default)")
    recompute = _spelled(rid, row, "recompute", RECOMPUTE_MODES, RECOMPUTE_SPELLINGS, assumed)
    if not recompute:
        recompute = filled["recompute"]
        assumed.append(f"recompute={recompute} ({framework} default)")
    zero = _zero_stage(rid, row, assumed)
    if zero is None:
        zero = filled["zero"]
        assumed.append(f"zero={zero} ({framework} default)")
    if filled["tp_comm_overlap"]:
        assumed.append(f"tp_comm_overlap=true ({framework} default)")
    strategy = Strategy(**values, sequence_parallel=sp, recompute=recompute, zero=zero,
                        overlap_grad_reduce=filled["overlap_grad_reduce"],
                        overlap_param_gather=filled["overlap_param_gather"],
                        tp_comm_overlap=filled["tp_comm_overlap"])
    strategy = _with_interleaved_group(strategy, job.global_batch, assumed)
    beyond = framework_violation(strategy, job)
    if beyond:
        # the run happened: model it as given rather than refuse what we believe the engine cannot do
        job = replace(job, enforce_framework_limits=False)
        assumed.append(f"modelled as given although {beyond}")
    num_gpus = _int(row, "num_gpus")
    if strategy.world_size != num_gpus:
        raise ParaplanError(f"row {rid!r}: tp*cp*dp*pp = {strategy.world_size} but num_gpus = {num_gpus}")
    gpu = (row.get("gpu") or "").strip()
    if not gpu:
        raise ParaplanError(f"row {rid!r}: column gpu is empty; a GPU name is required (see `paraplan presets`)")
    resolved = resolve_gpu_name(gpu)
    if resolved != gpu:
        assumed.append(f"gpu {gpu!r} read as {resolved}")
    node_size = per_node = _int(row, "gpus_per_node", 8)
    if num_gpus > node_size and num_gpus % node_size:
        # a job on part of each node (256 GPUs on 72-GPU NVL72 racks runs 64 per rack): the most per node that
        # fills whole nodes evenly
        per_node = max(d for d in range(1, node_size + 1) if num_gpus % d == 0)
        assumed.append(f"{per_node} GPUs used per node of {node_size} ({num_gpus} GPUs)")
    cluster = cluster_from_links(gpu, num_gpus, per_node, _float(row, "intra_node_GBps"), _float(row, "inter_node_Gbps"))
    return RunCase(id=rid, source=row.get("source", ""), model=model, cluster=cluster, job=job, strategy=strategy,
                   measured_iter_time_s=_float(row, "measured_iter_time_s"), assumptions=assumed)
