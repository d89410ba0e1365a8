"""Strategy: how one iteration is split over GPUs, and the named validity rules the engines enforce."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np

from paraplan.errors import ParaplanError
from paraplan.frameworks import framework_limits

RECOMPUTE_MODES = ("none", "selective", "full")
SCHEDULES = ("1f1b", "interleaved", "gpipe")
ZERO_STAGES = (0, 1, 2, 3)

# Short names accepted in "tp=8,pp=4,..." strings, mapped to field names.
ALIASES = {"mbs": "micro_batch", "micro_batch_size": "micro_batch", "sp": "sequence_parallel",
           "vp": "vpp", "zero_stage": "zero", "dist_opt": "zero"}
_BOOL = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


@dataclass(frozen=True)
class Strategy:
    """Degrees multiply to the world size: tp * cp * dp * pp (ep divides dp * cp and shards only the experts)."""
    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    vpp: int = 1                       # virtual pipeline chunks per pipeline rank (>1 means interleaved 1F1B)
    micro_batch: int = 1               # sequences per micro-batch per data-parallel rank
    sequence_parallel: bool = False    # Megatron SP: shard LayerNorm/dropout activations over TP
    zero: int = 0                      # 0 DDP, 1 optimizer states sharded (= Megatron distributed optimizer), 2, 3
    recompute: str = "none"
    schedule: str = "1f1b"
    overlap_grad_reduce: bool = True   # DP gradient reduce bucketed behind backward
    overlap_param_gather: bool = True  # ZeRO-3 / distributed-optimizer parameter gathers behind compute
    tp_comm_overlap: bool = False      # Megatron/TE userbuffers overlap of TP collectives with GEMMs
    layers_per_stage: tuple[int, ...] | None = None  # uneven split: layers per virtual stage (pp*vpp entries)
    # Megatron's microbatch_group_size_per_vp_stage (interleaved schedule): micro-batches run through the chunks in
    # groups of this many; None = pp, Megatron's default
    microbatch_group_size: int | None = None

    def __post_init__(self):
        for name in ("dp", "tp", "pp", "cp", "ep", "vpp", "micro_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParaplanError(f"strategy {name} must be a positive integer, got {value!r}")
        if self.zero not in ZERO_STAGES:
            raise ParaplanError(f"strategy zero must be one of 0, 1, 2, 3, got {self.zero!r}")
        if self.recompute not in RECOMPUTE_MODES:
            raise ParaplanError(f"strategy recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {self.recompute!r}")
        if self.schedule not in SCHEDULES:
            raise ParaplanError(f"strategy schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.vpp > 1 and self.schedule == "1f1b":
            object.__setattr__(self, "schedule", "interleaved")
        if self.layers_per_stage is not None:
            object.__setattr__(self, "layers_per_stage", tuple(self.layers_per_stage))
        group = self.microbatch_group_size
        if group is not None and (not isinstance(group, int) or isinstance(group, bool) or group < 1):
            raise ParaplanError(f"strategy microbatch_group_size must be a positive integer, got {group!r}")

    @property
    def expert_tp(self) -> int:
        """Tensor-parallel degree of the expert MLPs. Megatron folds EP over tp*dp*cp: experts keep TP sharding when
        ep divides dp*cp, otherwise (e.g. tp=2, ep=32, dp=16) expert_tensor_parallel_size is 1."""
        return self.tp if (self.dp * self.cp) % self.ep == 0 else 1

    @property
    def expert_dp(self) -> int:
        """Data-parallel degree of the expert weights: the ranks of tp*dp*cp not used by ep or expert TP."""
        return self.tp * self.dp * self.cp // (self.ep * self.expert_tp)

    def num_microbatches(self, global_batch: int) -> int:
        """Micro-batches each pipeline runs per iteration."""
        return global_batch // (self.dp * self.micro_batch)

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    def with_(self, **changes) -> "Strategy":
        return replace(self, **changes)

    def describe(self) -> str:
        parts = [f"tp={self.tp}", f"pp={self.pp}", f"dp={self.dp}"]
        parts += [f"{k}={getattr(self, k)}" for k in ("cp", "ep", "vpp") if getattr(self, k) > 1]
        parts += [f"mbs={self.micro_batch}", f"zero={self.zero}", f"recompute={self.recompute}"]
        if self.sequence_parallel:
            parts.append("sp=true")
        if self.microbatch_group_size is not None:
            parts.append(f"microbatch_group_size={self.microbatch_group_size}")
        return ",".join(parts)

    @classmethod
    def parse(cls, text: str, **defaults) -> "Strategy":
        """Parse "tp=8,pp=4,dp=2,mbs=1,zero=1,recompute=selective,sp=true" (unknown keys are an error)."""
        known = {f.name: f for f in fields(cls)}
        values = dict(defaults)
        for item in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in item:
                raise ParaplanError(f"strategy item {item!r} is not key=value; allowed keys: {', '.join(sorted(known))}")
            key, raw = (s.strip() for s in item.split("=", 1))
            key = ALIASES.get(key, key)
            if key not in known:
                raise ParaplanError(f"unknown strategy key {key!r}; allowed: {', '.join(sorted(set(known) | set(ALIASES)))}")
            values[key] = _convert(key, raw, known[key].type)
        return cls(**values)


def _convert(key: str, raw: str, annotation) -> object:
    annotation = str(annotation)
    if annotation.startswith("bool"):
        if raw.lower() not in _BOOL:
            raise ParaplanError(f"strategy {key} must be true or false, got {raw!r}")
        return _BOOL[raw.lower()]
    if annotation.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise ParaplanError(f"strategy {key} must be an integer, got {raw!r}") from None
    if annotation.startswith("tuple"):
        try:
            return tuple(int(x) for x in raw.replace("/", ":").split(":"))
        except ValueError:
            raise ParaplanError(f"strategy {key} must be layer counts separated by ':', got {raw!r}") from None
    return raw


def default_layer_split(layers: int, stages: int) -> tuple[int, ...]:
    """Layers per virtual stage: an even split when it divides, else Megatron's account-for-embedding/loss option counts
    the embedding and the loss as one layer each on the first and last stage (e.g. Llama-3 405B, 126 layers on
    8 stages: 15, 16 x 6, 15); what still does not divide goes to the middle stages."""
    if layers % stages == 0:
        return (layers // stages,) * stages
    counts = [0] * stages
    total = layers + 2
    base, extra = divmod(total, stages)
    for i in range(stages):
        counts[i] = base + (1 if 0 < i <= extra else 0)
    counts[0] -= 1
    counts[-1] -= 1
    while sum(counts) > layers:            # stages == 1 or more stages than the middle can absorb
        counts[counts.index(max(counts))] -= 1
    if min(counts) < 1:                    # nearly one layer per stage: an edge stage would hold none; split evenly
        base, extra = divmod(layers, stages)
        first_extra = (stages - extra) // 2          # the extra layers go to the middle stages
        counts = [base + (1 if first_extra <= i < first_extra + extra else 0) for i in range(stages)]
    return tuple(counts)


# ---- validity rules ---------------------------------------------------------------------------------------------
# Each rule is a predicate `broken(s, model, cluster, job)` written with arithmetic, comparisons and `&`/`|` only, so
# the same expression judges one Strategy (giving a bool) or a whole search space at once (StrategyColumns of numpy
# arrays, giving a bool array), and a `reason` that explains a broken rule in one line for one Strategy.

def _either(cond, a, b):
    """a where cond else b, for scalars and numpy arrays alike."""
    return np.where(cond, a, b)


@dataclass(frozen=True)
class Rule:
    name: str
    broken: Callable      # (strategy or columns, model, cluster, job) -> bool or bool array
    reason: Callable      # (strategy, model, cluster, job) -> one-line explanation


def _sequence_shards(s):
    return _either(s.cp > 1, 2 * s.cp, 1) * _either(s.sequence_parallel, s.tp, 1)


def _layers_broken(s, model, cluster, job):
    if getattr(s, "layers_per_stage", None) is not None:
        counts = s.layers_per_stage
        return len(counts) != s.pp * s.vpp or sum(counts) != model.layers or min(counts) < 1
    return model.layers < s.pp * s.vpp


def _layers_reason(s, model, cluster, job):
    if s.layers_per_stage is not None:
        return (f"layers_per_stage {s.layers_per_stage} must have pp*vpp={s.pp * s.vpp} positive entries summing to "
                f"{model.layers}")
    return f"layers ({model.layers}) must be at least pp*vpp ({s.pp}*{s.vpp})"


def _interleaving_reason(s, model, cluster, job):
    if s.pp < 2:
        return "interleaved schedule (vpp > 1) needs pp >= 2"
    m = s.num_microbatches(job.global_batch)
    if s.microbatch_group_size is not None:
        return (f"interleaved schedule (vpp > 1): microbatch_group_size {s.microbatch_group_size} must be in "
                f"[pp={s.pp}, micro-batches per pipeline={m}] and leave a last group of 0 or at least pp micro-batches")
    return (f"interleaved schedule (vpp > 1) needs the micro-batches per pipeline ({m}"
            f" = global batch / (dp*micro_batch)) to be a multiple of pp ({s.pp})")


def interleaved_groups_ok(m, pp, group):
    """Megatron's interleaved schedule takes micro-batches in groups of `group` (pp by default); a last group of
    fewer than pp micro-batches deadlocks, so m must be a multiple of the group or leave at least pp over."""
    rem = m % group
    return (pp <= group) & (group <= m) & ((rem == 0) | (rem >= pp))


def _groups_broken(s, global_batch):
    m = s.num_microbatches(global_batch)
    group = getattr(s, "microbatch_group_size", None)      # the search's candidate arrays have no such field
    return np.logical_not(interleaved_groups_ok(m, s.pp, s.pp if group is None else group))


def _experts_broken(s, model, cluster, job):
    experts = model.moe.num_experts if model.moe else 1
    return (s.ep > 1) & ((model.moe is None) | (experts % s.ep != 0) | ((s.tp * s.dp * s.cp) % s.ep != 0))


def _experts_reason(s, model, cluster, job):
    if not model.moe:
        return f"ep={s.ep} needs a mixture-of-experts model; {model.name} is dense"
    if model.moe.num_experts % s.ep:
        return f"experts ({model.moe.num_experts}) must be divisible by ep ({s.ep})"
    return f"ep ({s.ep}) must divide tp*dp*cp ({s.tp * s.dp * s.cp})"


def _framework_broken(s, model, cluster, job):
    if not job.enforce_framework_limits:
        return False
    lim = framework_limits(job.framework)
    zero_ok = np.isin(s.zero, lim.zero) & ((s.pp == 1) | np.isin(s.zero, lim.zero_with_pp))
    sp_ok = _either(s.tp > 1, np.isin(s.sequence_parallel, lim.sequence_parallel), True)
    return ~zero_ok | ~sp_ok | ((s.cp > 1) & (not lim.context_parallel)) | ((s.vpp > 1) & (not lim.interleaved))


def _framework_reason(s, model, cluster, job):
    lim, fw = framework_limits(job.framework), job.framework
    if s.zero not in lim.zero:
        return f"{fw} offers ZeRO stages {', '.join(map(str, lim.zero))}, not zero={s.zero}"
    if s.pp > 1 and s.zero not in lim.zero_with_pp:
        return f"{fw} allows only ZeRO stages {', '.join(map(str, lim.zero_with_pp))} with pipeline parallelism (pp={s.pp})"
    if s.tp > 1 and s.sequence_parallel not in lim.sequence_parallel:
        return f"{fw} runs tensor parallelism with sequence_parallel={str(lim.sequence_parallel[0]).lower()} only"
    if s.cp > 1 and not lim.context_parallel:
        return f"{fw} has no context parallelism (cp={s.cp})"
    return f"{fw} has no interleaved pipeline schedule (vpp={s.vpp})"


def framework_violation(strategy, job) -> str | None:
    """Why `job.framework` cannot run `strategy` (frameworks.FRAMEWORK_LIMITS), or None."""
    return _framework_reason(strategy, None, None, job) if bool(_framework_broken(strategy, None, None, job)) else None


RULES = (
    Rule("world_size", lambda s, m, c, j: s.world_size != c.num_gpus,
         lambda s, m, c, j: f"tp*cp*dp*pp = {s.world_size} must equal the cluster's {c.num_gpus} GPUs"),
    Rule("heads_divisible_by_tp", lambda s, m, c, j: m.heads % s.tp != 0,
         lambda s, m, c, j: f"attention heads ({m.heads}) must be divisible by tp ({s.tp})"),
    # Megatron replicates KV heads when tp > kv_heads only if tp is a multiple of kv_heads
    Rule("kv_heads_vs_tp", lambda s, m, c, j: (m.kv_heads % s.tp != 0) & (s.tp % m.kv_heads != 0),
         lambda s, m, c, j: f"kv_heads ({m.kv_heads}) and tp ({s.tp}) must divide one another"),
    Rule("ffn_divisible_by_tp", lambda s, m, c, j: m.ffn % s.tp != 0,
         lambda s, m, c, j: f"ffn size ({m.ffn}) must be divisible by tp ({s.tp})"),
    Rule("layers_split", _layers_broken, _layers_reason),
    Rule("batch_divisible", lambda s, m, c, j: j.global_batch % (s.dp * s.micro_batch) != 0,
         lambda s, m, c, j: f"global batch ({j.global_batch}) must be divisible by dp*micro_batch ({s.dp}*{s.micro_batch})"),
    # Megatron (schedules.py): micro-batches go through the chunks in groups of pp, so their number must be a
    # multiple of pp (microbatch_group_size_per_vp_stage defaults to pp)
    Rule("interleaving", lambda s, m, c, j: (s.vpp > 1) & ((s.pp < 2) | _groups_broken(s, j.global_batch)),
         _interleaving_reason),
    # causal load balancing splits the sequence into 2*cp chunks; SP splits it again over tp
    Rule("sequence_divisible", lambda s, m, c, j: j.seq_len % _sequence_shards(s) != 0,
         lambda s, m, c, j: f"sequence length ({j.seq_len}) must be divisible by "
                            f"{'2*cp' if s.cp > 1 else ''}{'*tp (SP)' if s.sequence_parallel else ''} = {int(_sequence_shards(s))}"),
    Rule("experts", _experts_broken, _experts_reason),
    Rule("framework_supports", _framework_broken, _framework_reason),
)


def violations(strategy, model, cluster, job) -> list[str]:
    """All broken rules, as one-line reasons (empty when the strategy is valid)."""
    return [rule.reason(strategy, model, cluster, job) for rule in RULES if bool(rule.broken(strategy, model, cluster, job))]


def check(strategy, model, cluster, job) -> None:
    broken = violations(strategy, model, cluster, job)
    if broken:
        raise ParaplanError(f"invalid strategy {strategy.describe()}: {broken[0]}")
