"""`paraplan replan --trace FILE`: re-planning over a bandwidth trace, against keeping the initial plan."""
from __future__ import annotations

import json

import typer
from rich.table import Table

from paraplan.cli import _fail, app, console
from paraplan.errors import ParaplanError


def replan_api(model: str, cluster: str, trace: str, global_batch: int, seq_len: int, precision: str = "bf16",
               framework: str = "megatron-lm", hysteresis: float = 0.05, restart_s: float = 60.0,
               storage_gbps: float = 20.0, forecast: str = "online", prior_s: float = 3600.0):
    """paraplan.network.replan.replan for preset/file names (the library call behind the command)."""
    from paraplan.api import check_positive
    from paraplan.network.replan import SwitchCost, replan
    from paraplan.network.trace import read_trace
    from paraplan.specs import JobSpec
    from paraplan.specs.loaders import load_cluster, load_model
    check_positive(global_batch=global_batch, seq_len=seq_len)
    if restart_s < 0 or storage_gbps <= 0:
        raise ParaplanError(f"--restart-s must be >= 0 and --storage-gbps > 0, got {restart_s} and {storage_gbps}")
    cluster_spec = load_cluster(cluster)
    segments = read_trace(trace, cluster_spec)
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision, framework=framework)
    return replan(load_model(model), cluster_spec, job, segments, hysteresis, SwitchCost(restart_s, storage_gbps),
                  forecast=forecast, prior_s=prior_s)


@app.command("replan")
def replan_command(
    model: str = typer.Option(..., help="preset name, Hugging Face config.json or YAML/JSON model file"),
    cluster: str = typer.Option(..., help="cluster preset NAME:GPUS or YAML/JSON file (node groups allowed)"),
    trace: str = typer.Option(..., "--trace", help="bandwidth trace CSV: time_s,link,bandwidth_gbps "
                              "(see examples/trace_cloud.csv)"),
    global_batch: int = typer.Option(..., "--global-batch", help="sequences per optimizer step"),
    seq_len: int = typer.Option(..., "--seq-len", help="tokens per sequence"),
    precision: str = typer.Option("bf16", help="fp16, bf16 or fp8"),
    framework: str = typer.Option("megatron-lm", help="the engine whose rules and conventions apply"),
    hysteresis: float = typer.Option(0.05, help="switch only when the new plan wins by this fraction after "
                                     "paying the switch cost"),
    restart_s: float = typer.Option(60.0, "--restart-s", help="seconds to stop and relaunch a job"),
    storage_gbps: float = typer.Option(20.0, "--storage-gbps", help="checkpoint save/restore bandwidth, GB/s"),
    forecast: str = typer.Option("online", help="online: decide from past durations only; oracle: read each "
                                 "segment's duration from the trace (an upper bound)"),
    prior_s: float = typer.Option(3600.0, "--prior-s", help="online: prior mean duration of a network condition, s"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
):
    """For each change of a bandwidth trace: the best plan for the new conditions, whether switching pays off
    after checkpoint/restart costs (with hysteresis), and the throughput over the trace against keeping the
    initial plan; also the single most robust plan."""
    try:
        result = replan_api(model, cluster, trace, global_batch, seq_len, precision, framework, hysteresis,
                            restart_s, storage_gbps, forecast, prior_s)
    except ParaplanError as exc:
        _fail(str(exc))
    doc = result.to_dict()
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    table = Table("from s", "to s", "best plan for the conditions", "best tok/s", "running tok/s",
                  "expected s", "switch")
    for s in result.steps:
        table.add_row(f"{s.start_s:g}", f"{s.end_s:g}", s.best_plan, f"{s.best_tokens_per_s:,.0f}",
                      f"{s.running_tokens_per_s:,.0f}", f"{s.expected_s:,.0f}",
                      f"yes ({s.switch_cost_s:.0f} s)" if s.switched else "-")
    console.print(table)
    tp = doc["throughput_tokens_per_s"]
    console.print(f"over {result.duration_s:g} s: re-planning ({result.forecast}) {tp['replan']:,.0f} tokens/s "
                  f"({result.switches} switches), static {tp['static']:,.0f}, robust {tp['robust']:,.0f}; "
                  f"re-planning / static {doc['replan_vs_static']:.3f}, robust / static {doc['robust_vs_static']:.3f}, "
                  f"oracle (durations known) / static {doc['oracle_vs_static']:.3f}")
    console.print(f"robust plan: {result.robust_plan}")
