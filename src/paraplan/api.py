"""The library calls behind the CLI: everything `paraplan` does from a terminal is one call here."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from paraplan.cost.calibration import Calibration
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.frameworks import strategy_defaults
from paraplan.profile.hardware import apply_hardware, load_hardware
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Plan, Strategy
from paraplan.specs.strategy import ALIASES
from paraplan.specs.loaders import load_cluster, load_model
from paraplan.validate.runs import read_rows
from paraplan.validate.score import RowResult, measured_time, predict_rows, row_group


@dataclass
class StrategyCase:
    """One strategy read from text, with the specs it runs on: what estimate() needs."""
    model: ModelSpec
    cluster: ClusterSpec
    job: JobSpec
    strategy: Strategy
    assumed: list[str]                 # framework defaults filled in
    calibration: Calibration | None    # from a hardware profile, else None (the catalog's)


def strategy_case(model: str, cluster: str | None, strategy: str, global_batch: int, seq_len: int,
                  precision: str = "bf16", framework: str = "megatron-lm", num_gpus: int | None = None,
                  hardware: str | Path | None = None) -> StrategyCase:
    """Read one strategy given as text ("tp=8,pp=4,dp=2,mbs=1,...") as `paraplan estimate` does. The cluster is
    sized to the strategy's world size unless `num_gpus` or a `NAME:GPUS` cluster says otherwise. `hardware`: a
    `paraplan profile` file whose measurements replace the catalog's numbers (see hardware_setup); then `cluster`
    may be None."""
    check_positive(global_batch=global_batch, seq_len=seq_len)
    strat, assumed = parse_strategy(strategy, framework, precision)
    model_spec = load_model(model)
    if cluster is None and hardware is None:
        raise ParaplanError("give a cluster, or a hardware profile (--hardware) to run on the profiled node")
    if num_gpus is None and (cluster is None or (":" not in cluster and not Path(cluster).is_file())):
        num_gpus = strat.world_size
    cluster_spec = load_cluster(cluster, num_gpus) if cluster is not None else None
    calibration = None
    if hardware is not None:
        cluster_spec, calibration = hardware_setup(hardware, framework, cluster_spec, num_gpus)
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision, framework=framework)
    return StrategyCase(model_spec, cluster_spec, job, strat, assumed, calibration)


def estimate_strategy(model: str, cluster: str | None, strategy: str, global_batch: int, seq_len: int,
                      precision: str = "bf16", framework: str = "megatron-lm", num_gpus: int | None = None,
                      hardware: str | Path | None = None, record_events: bool = False) -> Plan:
    """Estimate one strategy given as text (see strategy_case)."""
    c = strategy_case(model, cluster, strategy, global_batch, seq_len, precision, framework, num_gpus, hardware)
    return estimate(c.model, c.cluster, c.job, c.strategy, calibration=c.calibration, assumptions=c.assumed,
                    record_events=record_events)


def hardware_setup(hardware: str | Path, framework: str, cluster: ClusterSpec | None = None,
                   num_gpus: int | None = None) -> tuple[ClusterSpec, Calibration]:
    """The cluster and calibration that make the cost model use a hardware profile (`paraplan profile`): the
    profiled GPU and measured links in `cluster` (or, when None, `num_gpus` devices on nodes like the profiled
    one), and the catalog calibration for `framework` with the profile's constants and curves on top."""
    profile = load_hardware(hardware)
    return apply_hardware(profile, cluster, num_gpus), profile.calibration(framework)


def parse_strategy(text: str, framework: str, precision: str = "bf16") -> tuple[Strategy, list[str]]:
    """Strategy from "key=value,..." text; keys left out take the framework's defaults (as for an empty field in a
    measured-runs CSV), and each default taken is reported."""
    given = {ALIASES.get(k.strip(), k.strip()) for k in (item.split("=", 1)[0] for item in text.split(",") if item.strip())}
    base = Strategy.parse(text)
    defaults = strategy_defaults(framework, base.tp, precision,
                                 base.sequence_parallel if "sequence_parallel" in given else None)
    fill = {k: v for k, v in defaults.items() if k not in given}
    assumed = [f"{k}={str(v).lower()} ({framework} default)" for k, v in fill.items()
               if k in ("zero", "recompute", "sequence_parallel") or (k == "tp_comm_overlap" and v)]
    return base.with_(**fill), assumed


def estimate_runs(path: str | Path) -> list[RowResult]:
    """Predict every row of a measured-runs CSV; rows that cannot be modelled carry an error instead of a time.

    A problem with the file itself (missing, not a CSV, required columns absent) raises ParaplanError. A problem
    with one row never does: that row gets `error` set, whatever went wrong while modelling it, so that one odd row
    cannot take down a whole file (the `--runs --json` contract of docs/DESIGN.md)."""
    return [_estimate_row(row) for row in read_rows(path)]


def _estimate_row(row: dict) -> RowResult:
    rid = str(row.get("id") or "?")
    try:
        result = predict_rows([row])[0]
    except Exception as exc:  # noqa: BLE001 - a library bug on odd input must not crash the other rows
        return RowResult(rid, row_group(rid), measured_time(row), None,
                         error=f"cannot model this row ({type(exc).__name__}: {' '.join(str(exc).split())})")
    for name in ("predicted_s", "memory_gib"):
        value = getattr(result, name)
        if value is not None and not math.isfinite(value):
            return RowResult(result.id, result.group, result.measured_s, None,
                             error=f"prediction is not a finite number ({name.removesuffix('_s')}={value}); "
                                   "check the row's numbers", assumptions=result.assumptions)
    return result


def run_result_dict(r: RowResult) -> dict:
    """One row of `estimate --runs --json`: the prediction, or {"id", "error"} for a row that cannot be modelled."""
    if r.error is not None or r.predicted_s is None:
        return {"id": r.id, "error": r.error or "no prediction"}
    return {"id": r.id, "iteration_time_s": r.predicted_s, "memory_gib_per_gpu": r.memory_gib,
            "fits_in_memory": r.fits, "assumed": list(r.assumptions)}


def check_positive(**sizes: int | None) -> None:
    """ParaplanError naming the first size that is given but not a positive integer (keys name the CLI flags)."""
    for flag, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ParaplanError(f"--{flag.replace('_', '-')} must be a positive integer, got {value!r}")


def plan_search(model: str, cluster: str, global_batch: int, seq_len: int, precision: str = "bf16",
                framework: str = "megatron-lm", num_gpus: int | None = None, fix=(), allow=(), top_k: int = 5,
                exhaustive: bool = False, executor: str = "process", workers: int | None = None,
                address: str | None = None, progress=None, hardware: str | Path | None = None):
    """The fastest strategies that fit (paraplan.search.search) for preset/file names, with `fix`/`allow` items as
    on the command line ("tp=8", "zero=0,1"). `hardware`: a `paraplan profile` file (then `cluster` may be None)."""
    from paraplan.search import parse_knob_values, search
    check_positive(global_batch=global_batch, seq_len=seq_len, num_gpus=num_gpus, top=top_k, workers=workers)
    allowed = parse_knob_values(fix, allow)
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision, framework=framework)
    if cluster is None and hardware is None:
        raise ParaplanError("give a cluster, or a hardware profile (--hardware) to plan on the profiled node")
    cluster_spec = load_cluster(cluster, num_gpus) if cluster is not None else None
    calibration = None
    if hardware is not None:
        cluster_spec, calibration = hardware_setup(hardware, framework, cluster_spec, num_gpus)
    if cluster_spec is not None and not cluster_spec.is_homogeneous:
        raise ParaplanError(f"cluster {cluster_spec.name!r} mixes node types "
                            f"({', '.join(sorted({g.gpu.name for g in cluster_spec.node_groups}))}); plan it with "
                            f"`paraplan hetero-plan` (heterogeneous stages, layers balanced per GPU type)")
    return search(load_model(model), cluster_spec, job, allowed, top_k=top_k, exhaustive=exhaustive,
                  executor=executor, workers=workers, address=address, calibration=calibration, progress=progress)


def explain_strategy(result, text: str) -> str:
    """How the strategy in `text` ("tp=4,pp=8,...", framework defaults for the rest) compares with the winner of a
    search: its rank among the plans found, why it is invalid, why it does not fit, or how much slower it is."""
    from paraplan.search import compare
    from paraplan.specs.strategy import violations
    strat, _ = parse_strategy(text, result.job.framework, result.job.precision)
    broken = violations(strat, result.model, result.cluster, result.job)
    if broken:
        return f"{strat.describe()} is not valid here: {broken[0]}"
    plan = estimate(result.model, result.cluster, result.job, strat, calibration=result.calibration)
    if not plan.memory.fits:
        return (f"{strat.describe()} does not fit: {plan.memory.total_gib:.1f} GiB per GPU, more than the "
                f"{plan.memory.capacity_gib:.1f} GiB usable")
    if not result.plans:
        return f"{strat.describe()} fits and takes {plan.iteration_time_s:.3f} s, but the search found no plan"
    best = result.plans[0]
    for rank, p in enumerate(result.plans, start=1):
        if p.strategy == plan.strategy:
            return f"{strat.describe()} is ranked {rank} of the plans shown: " + compare(p, best)
    return f"{strat.describe()} takes {plan.iteration_time_s:.3f} s against the best's {best.iteration_time_s:.3f} s: " + compare(plan, best)
