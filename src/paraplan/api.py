"""The library calls behind the CLI: everything `paraplan` does from a terminal is one call here."""
from __future__ import annotations

import math
from pathlib import Path

from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.frameworks import strategy_defaults
from paraplan.specs import JobSpec, Plan, Strategy
from paraplan.specs.strategy import ALIASES
from paraplan.specs.loaders import load_cluster, load_model
from paraplan.validate.runs import read_rows
from paraplan.validate.score import RowResult, measured_time, predict_rows, row_group


def estimate_strategy(model: str, cluster: str, strategy: str, global_batch: int, seq_len: int,
                      precision: str = "bf16", framework: str = "megatron-lm", num_gpus: int | None = None) -> Plan:
    """Estimate one strategy given as text ("tp=8,pp=4,dp=2,mbs=1,..."). The cluster is sized to the strategy's
    world size unless `num_gpus` or a `NAME:GPUS` cluster says otherwise."""
    strat, assumed = parse_strategy(strategy, framework, precision)
    model_spec = load_model(model)
    if num_gpus is None and ":" not in cluster and not Path(cluster).is_file():
        num_gpus = strat.world_size
    cluster_spec = load_cluster(cluster, num_gpus)
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision, framework=framework)
    return estimate(model_spec, cluster_spec, job, strat, assumptions=assumed)


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
