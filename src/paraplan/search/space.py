"""The strategy space of one model, cluster and job, held as columns (one numpy array per knob) so that the validity
rules of specs/strategy.py and the bounds of search/bounds.py judge every candidate at once.

The space: every (tp, pp, cp, dp) whose product is the cluster's GPU count; ep among the divisors of the expert count;
vpp = 1 or an interleaving that splits the layers evenly (vpp * pp divides the layer count); every micro-batch size
that divides the global batch; Megatron sequence parallelism off/on; ZeRO 0-3; recompute none/selective/full.
`--allow KNOB=a,b` replaces a knob's values (so vpp=3 with an uneven split can be asked for), `--fix KNOB=a` is
the one-value case.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from paraplan.errors import ParaplanError
from paraplan.frameworks import strategy_defaults, zero2_grads_sharded
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Strategy
from paraplan.specs.strategy import ALIASES, RECOMPUTE_MODES, RULES, ZERO_STAGES

INT_KNOBS = ("tp", "pp", "cp", "dp", "ep", "vpp", "micro_batch", "zero")
KNOBS = INT_KNOBS + ("sequence_parallel", "recompute")
# knobs that are not searched but come from the framework's defaults for each candidate
FRAMEWORK_FLAGS = ("overlap_grad_reduce", "overlap_param_gather", "tp_comm_overlap")
_BOOL_WORDS = {"true": True, "on": True, "1": True, "yes": True, "false": False, "off": False, "0": False, "no": False}


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def parse_knob_values(fix: list[str] | tuple[str, ...] = (), allow: list[str] | tuple[str, ...] = ()) -> dict[str, tuple]:
    """{knob: allowed values} from `--fix tp=8` and `--allow zero=0,1` items (several items may share one option,
    separated by ';' or given as separate options). A knob both fixed and allowed must agree."""
    out: dict[str, tuple] = {}
    for option, items in (("--allow", allow), ("--fix", fix)):
        for item in (p.strip() for chunk in items for p in chunk.replace(";", " ").split() if p.strip()):
            if "=" not in item:
                raise ParaplanError(f"{option} item {item!r} is not KNOB=VALUE[,VALUE...]; knobs: {', '.join(KNOBS)}")
            key, raw = (x.strip() for x in item.split("=", 1))
            key = ALIASES.get(key, key)
            if key == "mbs":
                key = "micro_batch"
            if key not in KNOBS:
                raise ParaplanError(f"unknown knob {key!r} in {option}; knobs: {', '.join(KNOBS)} (aliases mbs, sp)")
            values = tuple(_knob_value(key, v.strip(), option) for v in raw.split(",") if v.strip())
            if not values:
                raise ParaplanError(f"{option} {key}= gives no value")
            if option == "--fix" and len(values) != 1:
                raise ParaplanError(f"--fix {key} takes one value, got {raw!r} (use --allow for several)")
            if key in out:
                common = tuple(v for v in values if v in out[key])
                if not common:
                    raise ParaplanError(f"contradictory constraints on {key}: {option} {key}={raw} leaves no value "
                                        f"allowed by the other constraint ({', '.join(map(str, out[key]))})")
                values = common
            out[key] = values
    return out


def _knob_value(key: str, raw: str, option: str):
    if key == "sequence_parallel":
        if raw.lower() not in _BOOL_WORDS:
            raise ParaplanError(f"{option} sequence_parallel takes true or false, got {raw!r}")
        return _BOOL_WORDS[raw.lower()]
    if key == "recompute":
        if raw not in RECOMPUTE_MODES:
            raise ParaplanError(f"{option} recompute takes {', '.join(RECOMPUTE_MODES)}, got {raw!r}")
        return raw
    try:
        value = int(raw)
    except ValueError:
        raise ParaplanError(f"{option} {key} takes integers, got {raw!r}") from None
    if key == "zero" and value not in ZERO_STAGES:
        raise ParaplanError(f"{option} zero takes 0, 1, 2 or 3, got {value}")
    if key != "zero" and value < 1:
        raise ParaplanError(f"{option} {key} takes positive integers, got {value}")
    return value


class StrategyColumns:
    """Many strategies as columns: the attributes the validity rules and bounds read, as numpy arrays."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns
        for name, values in columns.items():
            setattr(self, name, values)
        self.layers_per_stage = None

    def __len__(self) -> int:
        return len(self.tp)

    @property
    def world_size(self):
        return self.dp * self.tp * self.pp * self.cp

    @cached_property
    def expert_tp(self):
        return np.where((self.dp * self.cp) % self.ep == 0, self.tp, 1)

    @cached_property
    def expert_dp(self):
        return self.tp * self.dp * self.cp // (self.ep * self.expert_tp)

    def num_microbatches(self, global_batch: int):
        return global_batch // (self.dp * self.micro_batch)

    def take(self, index) -> "StrategyColumns":
        return StrategyColumns({k: v[index] for k, v in self.columns.items()})

    def strategy(self, i: int, framework: str, precision: str) -> Strategy:
        """Candidate i as a Strategy."""
        values = {k: (bool(v[i]) if k == "sequence_parallel" else str(v[i]) if k == "recompute" else int(v[i]))
                  for k, v in self.columns.items()}
        return candidate_strategy(framework, precision, **values)


def candidate_strategy(framework: str, precision: str, **fields) -> Strategy:
    """A Strategy of the searched knobs `fields`; the flags the search does not vary take the framework's defaults."""
    defaults = strategy_defaults(framework, fields.get("tp", 1), precision, fields.get("sequence_parallel"))
    return Strategy(**fields, **{k: defaults[k] for k in FRAMEWORK_FLAGS})


@dataclass
class Space:
    candidates: StrategyColumns          # the valid ones
    size: int                            # all combinations generated, valid or not
    invalid_by_rule: dict[str, int]      # candidates removed by each rule (the first rule each breaks)


def default_values(model: ModelSpec, cluster: ClusterSpec, job: JobSpec) -> dict[str, tuple]:
    n = cluster.num_gpus
    return {"tp": tuple(divisors(n)), "pp": tuple(divisors(n)), "cp": tuple(divisors(n)),
            "ep": tuple(divisors(model.moe.num_experts)) if model.moe else (1,),
            "micro_batch": tuple(divisors(job.global_batch)), "sequence_parallel": (False, True),
            "zero": ZERO_STAGES, "recompute": RECOMPUTE_MODES}


def build_space(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, allowed: dict[str, tuple] | None = None,
                max_microbatches: int | None = None) -> Space:
    """Every candidate of the space (restricted by `allowed`), with the invalid ones removed rule by rule."""
    allowed = dict(allowed or {})
    values = default_values(model, cluster, job)
    values.update({k: v for k, v in allowed.items() if k in values})
    n = cluster.num_gpus
    # degrees: tp * pp * cp * dp = n (dp follows, unless restricted)
    deg = [(t, p, c, n // (t * p * c)) for t in values["tp"] for p in values["pp"] for c in values["cp"]
           if n % (t * p * c) == 0]
    if "dp" in allowed:
        deg = [d for d in deg if d[3] in allowed["dp"]]
    rows = []
    for t, p, c, d in deg:
        if "vpp" in allowed:
            vpps = allowed["vpp"]
        else:
            vpps = [1] + [v for v in range(2, model.layers // p + 1) if p > 1 and model.layers % (p * v) == 0]
        for v in vpps:
            rows.append((t, p, c, d, v))
    base = np.array(rows, dtype=np.int64).reshape(-1, 5)
    grid = [("ep", np.array(values["ep"], dtype=np.int64)),
            ("micro_batch", np.array(values["micro_batch"], dtype=np.int64)),
            ("sequence_parallel", np.array(values["sequence_parallel"], dtype=bool)),
            ("zero", np.array(values["zero"], dtype=np.int64)),
            ("recompute", np.array(values["recompute"]))]
    # cartesian product of the base rows with every other knob, as index arrays
    sizes = [len(base)] + [len(v) for _, v in grid]
    idx = np.indices(sizes).reshape(len(sizes), -1)
    cols = {name: base[idx[0], j] for j, name in enumerate(("tp", "pp", "cp", "dp", "vpp"))}
    for k, (name, vals) in enumerate(grid, start=1):
        cols[name] = vals[idx[k]]
    cand = StrategyColumns(cols)
    size = len(cand)
    invalid: dict[str, int] = {}
    keep = np.ones(size, dtype=bool)
    for rule in RULES:
        broken = np.broadcast_to(np.asarray(rule.broken(cand, model, cluster, job)), (size,)) & keep
        invalid[rule.name] = int(broken.sum())
        keep &= ~broken
    if max_microbatches is not None:
        too_many = (cand.num_microbatches(job.global_batch) > max_microbatches) & keep
        invalid["simulation_limit"] = int(too_many.sum())
        keep &= ~too_many
    # a tp=1 candidate is the same strategy with SP on or off: keep SP off only; where the engine accumulates
    # gradients unsharded (frameworks.zero2_grads_sharded), ZeRO-2 with several micro-batches is ZeRO-1 (kept when
    # ZeRO-1 is not in the space)
    dup = (cand.tp == 1) & cand.sequence_parallel & keep
    if 1 in values["zero"]:
        dup |= (cand.zero == 2) & ~zero2_grads_sharded(job.framework, cand.num_microbatches(job.global_batch)) & keep
    invalid["duplicate"] = int(dup.sum())
    keep &= ~dup
    return Space(cand.take(np.flatnonzero(keep)), size, invalid)
