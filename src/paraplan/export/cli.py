"""`paraplan export`, `paraplan trace` and `paraplan report`: one strategy (the same options as `paraplan estimate`)
turned into engine launch files, a Perfetto trace or an HTML report. Thin wrappers over paraplan.export,
paraplan.sim.trace and paraplan.report."""
from __future__ import annotations

import json
from typing import Optional

import typer

from paraplan import api
from paraplan.cli import _fail, app, console
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.export import FORMATS, export_plan, write_export

# The options of `paraplan estimate` that pick one strategy; declared once, shared by the three commands.
MODEL = typer.Option(..., help="preset name, Hugging Face config.json or YAML/JSON model file")
CLUSTER = typer.Option(..., help="cluster preset (NAME or NAME:GPUS) or YAML/JSON file")
STRATEGY = typer.Option("", help="e.g. tp=8,pp=4,dp=2,mbs=1,zero=1,recompute=selective,sp=true,vpp=2")
GLOBAL_BATCH = typer.Option(..., "--global-batch", help="sequences per optimizer step")
SEQ_LEN = typer.Option(..., "--seq-len", help="tokens per sequence")
PRECISION = typer.Option("bf16", help="fp16, bf16 or fp8")
FRAMEWORK = typer.Option("megatron-lm", help="megatron-lm, nemo, megatron-deepspeed, torchtitan, deepspeed, maxtext, other")


def plan_inputs(model: str, cluster: str, strategy: str, global_batch: int, seq_len: int, precision: str,
                framework: str, record_events: bool = False):
    """(plan, model, cluster, job) for one strategy given as text, read as `paraplan estimate` reads it."""
    c = api.strategy_case(model, cluster, strategy, global_batch, seq_len, precision, framework)
    plan = estimate(c.model, c.cluster, c.job, c.strategy, c.calibration, c.assumed, record_events=record_events)
    return plan, c.model, c.cluster, c.job


@app.command("export")
def export_command(
    fmt: str = typer.Option(..., "--format", help="megatron, torchtitan or deepspeed"),
    model: str = MODEL, cluster: str = CLUSTER, strategy: str = STRATEGY, global_batch: int = GLOBAL_BATCH,
    seq_len: int = SEQ_LEN, precision: str = PRECISION, framework: str = FRAMEWORK,
    out: Optional[str] = typer.Option(None, help="folder to write the files into (default: print them)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document: files, launch command, notes"),
):
    """The files and the exact launch command that run this strategy on Megatron-LM, torchtitan or DeepSpeed.
    A strategy the engine cannot run fails with the rule it breaks."""
    try:
        if fmt not in FORMATS:
            raise ParaplanError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        plan, m, c, job = plan_inputs(model, cluster, strategy, global_batch, seq_len, precision, framework)
        result = export_plan(plan, m, c, job, fmt)
        written = write_export(result, out) if out else []
    except ParaplanError as exc:
        _fail(str(exc))
    if as_json:
        doc = result.to_dict()
        doc["written"] = [str(p) for p in written]
        typer.echo(json.dumps(doc, indent=1))
        return
    if written:
        for p in written:
            console.print(f"wrote {p}")
    else:
        for name, text in result.files.items():
            console.print(f"[bold]# --- {name} ---[/bold]", highlight=False)
            typer.echo(text.rstrip("\n"))
    console.print(f"[bold]launch:[/bold] {result.launch}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]", highlight=False, soft_wrap=True)


@app.command("trace")
def trace_command(
    model: str = MODEL, cluster: str = CLUSTER, strategy: str = STRATEGY, global_batch: int = GLOBAL_BATCH,
    seq_len: int = SEQ_LEN, precision: str = PRECISION, framework: str = FRAMEWORK,
    out: str = typer.Option("paraplan_trace.json", help="trace file to write (Chrome trace-event JSON)"),
):
    """The simulated iteration as a Chrome trace-event JSON file: open it at ui.perfetto.dev."""
    from paraplan.sim.trace import write_trace
    try:
        plan, *_ = plan_inputs(model, cluster, strategy, global_batch, seq_len, precision, framework, True)
        path = write_trace(plan, out, title=f"{model} {plan.strategy.describe()}")
    except ParaplanError as exc:
        _fail(str(exc))
    console.print(f"wrote {path} ({plan.iteration_time_s:.4f} s iteration); open it at ui.perfetto.dev", highlight=False)


@app.command("report")
def report_command(
    model: str = MODEL, cluster: str = CLUSTER, strategy: str = STRATEGY, global_batch: int = GLOBAL_BATCH,
    seq_len: int = SEQ_LEN, precision: str = PRECISION, framework: str = FRAMEWORK,
    out: str = typer.Option("paraplan_report.html", help="HTML file to write (self-contained)"),
):
    """One self-contained HTML report: pipeline timeline, time breakdown, memory per GPU."""
    from paraplan.report import write_report
    try:
        plan, m, c, job = plan_inputs(model, cluster, strategy, global_batch, seq_len, precision, framework, True)
        context = {"model": m.name, "cluster": f"{c.name}, {c.num_gpus} x {c.gpu.name}",
                   "batch": f"{job.global_batch} x {job.seq_len} tokens", "precision": job.precision,
                   "framework": job.framework}
        path = write_report([plan], out, context=context)
    except ParaplanError as exc:
        _fail(str(exc))
    console.print(f"wrote {path}", highlight=False)
