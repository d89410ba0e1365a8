"""The library calls behind the CLI: everything `paraplan` does from a terminal is one call here."""
from __future__ import annotations

from pathlib import Path

from paraplan.estimate import estimate
from paraplan.frameworks import defaults_for
from paraplan.specs import JobSpec, Plan, Strategy
from paraplan.specs.loaders import load_cluster, load_model
from paraplan.validate.score import RowResult, predict_file


def estimate_strategy(model: str, cluster: str, strategy: str, global_batch: int, seq_len: int,
                      precision: str = "bf16", framework: str = "megatron-lm", num_gpus: int | None = None) -> Plan:
    """Estimate one strategy given as text ("tp=8,pp=4,dp=2,mbs=1,..."). The cluster is sized to the strategy's
    world size unless `num_gpus` or a `NAME:GPUS` cluster says otherwise."""
    defaults = defaults_for(framework)
    strat = Strategy.parse(strategy, overlap_grad_reduce=defaults["overlap_grad_reduce"],
                           overlap_param_gather=defaults["overlap_param_gather"])
    model_spec = load_model(model)
    if num_gpus is None and ":" not in cluster and not Path(cluster).is_file():
        num_gpus = strat.world_size
    cluster_spec = load_cluster(cluster, num_gpus)
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision, framework=framework)
    return estimate(model_spec, cluster_spec, job, strat)


def estimate_runs(path: str | Path) -> list[RowResult]:
    """Predict every row of a measured-runs CSV; rows that cannot be modelled carry an error instead of a time."""
    return predict_file(path)
