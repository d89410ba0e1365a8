"""`paraplan plan`: the search from the command line (a thin layer over paraplan.api.plan_search)."""
from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paraplan import api
from paraplan.cli import _fail, app, console
from paraplan.errors import ParaplanError
from paraplan.search.executors import EXECUTORS


@app.command()
def plan(
    model: str = typer.Option(..., help="preset name, Hugging Face config.json or YAML/JSON model file"),
    cluster: Optional[str] = typer.Option(None, help="cluster preset NAME:GPUS (e.g. dgx-h100:64) or YAML/JSON file"),
    global_batch: int = typer.Option(..., "--global-batch", help="sequences per optimizer step"),
    seq_len: int = typer.Option(..., "--seq-len", help="tokens per sequence"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPU count (instead of NAME:GPUS)"),
    precision: str = typer.Option("bf16", help="fp16, bf16 or fp8"),
    framework: str = typer.Option("megatron-lm", help="the engine whose rules and conventions apply"),
    fix: List[str] = typer.Option([], "--fix", help="pin knobs, e.g. --fix tp=8 --fix recompute=selective"),
    allow: List[str] = typer.Option([], "--allow", help="restrict knobs, e.g. --allow zero=0,1"),
    top: int = typer.Option(5, "--top", help="how many plans to rank"),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="simulate every valid candidate (no pruning)"),
    executor: str = typer.Option("process", help=f"{', '.join(EXECUTORS)}"),
    workers: Optional[int] = typer.Option(None, help="worker processes (default: CPU count)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address for --executor ray"),
    why: Optional[str] = typer.Option(None, "--why", help="compare this strategy with the winner"),
    hardware: Optional[str] = typer.Option(None, help="hardware profile from `paraplan profile` (measured GPU, "
                                           "links and efficiencies replace the catalog's)"),
    export: Optional[str] = typer.Option(None, "--export", help="write launch files of the best plan for "
                                         "megatron, torchtitan or deepspeed (into --out)"),
    out: str = typer.Option("paraplan_out", "--out", help="folder for --export files"),
    report: Optional[str] = typer.Option(None, "--report", help="write an HTML report of the search to this file"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
):
    """Find the fastest strategies that fit in memory: exact branch-and-bound search over dp, tp, pp, cp, ep, vpp,
    micro-batch, sequence parallelism, ZeRO and recompute."""
    try:
        if executor not in EXECUTORS:
            raise ParaplanError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        with Progress(TextColumn("searching"), BarColumn(), TextColumn("{task.completed}/{task.total} candidates"),
                      TimeElapsedColumn(), console=console, transient=True, disable=as_json) as bar:
            task = bar.add_task("search", total=None)
            result = api.plan_search(model, cluster, global_batch, seq_len, precision, framework, gpus, fix, allow,
                                     top, exhaustive, executor, workers, address,
                                     progress=lambda done, total: bar.update(task, completed=done, total=total),
                                     hardware=hardware)
        explanation = api.explain_strategy(result, why) if why else None
        written = _write_outputs(result, export, out, report) if result.plans else []
    except ParaplanError as exc:
        _fail(str(exc))
    if as_json:
        doc = result.to_dict()
        if explanation:
            doc["why"] = explanation
        typer.echo(json.dumps(doc, indent=1))
        if not result.plans:
            raise typer.Exit(3)
        return
    if not result.plans:
        _print_stats(result)
        typer.echo(f"error: {result.nothing_fits}", err=True)
        raise typer.Exit(3)
    _print_ranking(result)
    _print_stats(result)
    if explanation:
        console.print(f"why: {explanation}")
    for line in written:
        console.print(line)


def _write_outputs(result, export_format, folder, report_path) -> list[str]:
    """--export and --report for the best plan; lines saying what was written."""
    lines = []
    if export_format:
        from paraplan.export import export_plan, write_export
        exported = export_plan(result.plans[0], result.model, result.cluster, result.job, export_format)
        paths = write_export(exported, folder)
        lines.append(f"exported for {export_format}: {', '.join(map(str, paths))}; launch: {exported.launch}")
    if report_path:
        from paraplan.report.html import write_html
        from paraplan.report.search import search_report
        write_html(search_report(result, calibration=result.calibration), report_path)
        lines.append(f"report: {report_path}")
    return lines


def _print_ranking(result) -> None:
    from paraplan.search import compare
    best = result.plans[0]
    table = Table("#", "tp-pp-dp-cp-ep-vpp", "mbs", "SP", "ZeRO", "recomp", "iter s", "compute", "comm", "bubble",
                  "GiB (free)", "tokens/s", "MFU",
                  title=f"{result.model.name} on {result.cluster.num_gpus} x {result.cluster.gpu.name}, "
                        f"batch {result.job.global_batch} x {result.job.seq_len} ({result.job.framework})")
    for rank, p in enumerate(result.plans, start=1):
        s, t, m = p.strategy, p.time, p.memory
        table.add_row(str(rank), "-".join(str(x) for x in (s.tp, s.pp, s.dp, s.cp, s.ep, s.vpp)), str(s.micro_batch),
                      "on" if s.sequence_parallel else "off", str(s.zero), s.recompute, f"{p.iteration_time_s:.3f}",
                      f"{t.compute_s:.3f}", f"{t.exposed_comm_total_s:.3f}", f"{t.bubble_s:.3f}",
                      f"{m.total_gib:.1f} ({m.capacity_gib - m.total_gib:.1f})", f"{p.tokens_per_s:,.0f}",
                      f"{100 * p.mfu:.1f}%")
    console.print(table)
    for rank, p in enumerate(result.plans[1:], start=2):
        console.print(f"  #{rank} vs #1: {compare(p, best)}")


def _print_stats(result) -> None:
    st = result.stats
    pruned = ", ".join(f"{k.removeprefix('rule:')} {v:,}" for k, v in st.pruned.items())
    console.print(f"searched {st.space_size:,} candidates ({st.valid:,} valid) in {st.seconds:.2f} s on "
                  f"{st.workers} {st.executor} worker(s): {st.simulated:,} simulated "
                  f"({100 * st.pruned_fraction:.2f}% pruned){'' if not pruned else '; removed: ' + pruned}")
