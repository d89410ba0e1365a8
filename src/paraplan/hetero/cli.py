"""`paraplan hetero-plan`: the heterogeneous search and its baselines from the command line."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from paraplan.cli import _fail, app, console
from paraplan.errors import ParaplanError


def hetero_plan_api(model: str, cluster: str, global_batch: int, seq_len: int, precision: str = "bf16",
                    framework: str = "megatron-lm", top_k: int = 3, executor: str = "process",
                    workers: int | None = None, exhaustive: bool = False, orders: str = "all",
                    baselines: bool = True, cp: str = "1,2", vpp: str = "1,2", max_replicas: int = 3):
    """paraplan.hetero.compare.plan_hetero for preset/file names (the library call behind the command)."""
    from paraplan.api import check_positive
    from paraplan.hetero.compare import plan_hetero
    from paraplan.hetero.space import SpaceOptions
    from paraplan.specs import JobSpec
    from paraplan.specs.loaders import load_cluster, load_model
    check_positive(global_batch=global_batch, seq_len=seq_len, top=top_k, workers=workers)
    if orders not in ("all", "by_speed"):
        raise ParaplanError(f"--orders must be all or by_speed, got {orders!r}")
    if executor not in ("serial", "process", "ray"):
        raise ParaplanError(f"--executor must be serial, process or ray, got {executor!r}")
    if max_replicas < 2:
        raise ParaplanError(f"--max-replicas must be at least 2, got {max_replicas}")
    job = JobSpec(global_batch=global_batch, seq_len=seq_len, precision=precision, framework=framework)
    opts = SpaceOptions(orders=orders, cp=_degrees(cp, "--cp"), vpp=_degrees(vpp, "--vpp"))
    return plan_hetero(load_model(model), load_cluster(cluster), job, opts, top_k, executor, workers,
                       baselines=baselines, exhaustive=exhaustive, max_replicas=max_replicas)


def _degrees(text: str, option: str) -> tuple[int, ...]:
    """"1,2" -> (1, 2); anything but positive integers is a one-line error."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ParaplanError(f"{option} must be positive integers separated by commas (e.g. 1,2), got {text!r}")
    return values


@app.command("hetero-plan")
def hetero_plan(
    model: str = typer.Option(..., help="preset name, Hugging Face config.json or YAML/JSON model file"),
    cluster: str = typer.Option(..., help="cluster file with node_groups (see examples/hetero_*.yaml)"),
    global_batch: int = typer.Option(..., "--global-batch", help="sequences per optimizer step"),
    seq_len: int = typer.Option(..., "--seq-len", help="tokens per sequence"),
    precision: str = typer.Option("bf16", help="fp16, bf16 or fp8"),
    framework: str = typer.Option("megatron-lm", help="the engine whose rules and conventions apply"),
    top: int = typer.Option(3, "--top", help="how many plans to rank"),
    executor: str = typer.Option("process", help="serial, process or ray (a local Ray instance)"),
    workers: Optional[int] = typer.Option(None, help="worker processes (default: CPU count)"),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="simulate every plan (no pruning)"),
    orders: str = typer.Option("all", help="group orders along the pipeline: all, or by_speed (fastest first)"),
    cp: str = typer.Option("1,2", "--cp", help="context-parallel degrees to search (one per plan), e.g. 1,2,4"),
    vpp: str = typer.Option("1,2", "--vpp", help="virtual stages per stage to search (interleaved 1F1B)"),
    max_replicas: int = typer.Option(3, "--max-replicas", help="most data-parallel replicas in the replica family"),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="skip the baselines"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
):
    """Plan a mixed-GPU cluster: pipeline stages on node groups of different GPU types, layers balanced by each
    stage's speed and memory, tp/dp per stage; compared with the homogeneous subset, uniform split and Metis-like
    baselines."""
    try:
        result = hetero_plan_api(model, cluster, global_batch, seq_len, precision, framework, top, executor,
                                 workers, exhaustive, orders, not no_baselines, cp, vpp, max_replicas)
    except ParaplanError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        if not result.search.plans:
            raise typer.Exit(3)
        return
    best = result.search.best
    if best is None:
        console.print("[red]no heterogeneous plan fits in memory[/red]")
    else:
        console.print(f"[bold]{best.plan.summary()}[/bold]")
        table = Table("stage", "GPU", "tp", "cp", "dp", "layers", "zero", "recompute", "fwd+bwd s/mb", "send s",
                      "memory GiB")
        for i, (st, sr) in enumerate(zip(best.plan.stages, best.stages)):
            table.add_row(str(i), sr.gpu, str(st.tp), str(st.cp), str(st.dp), str(st.layers), str(st.zero),
                          st.recompute,
                          f"{sr.forward_s + sr.backward_s:.4f}", f"{sr.p2p_s:.4f}",
                          f"{sr.memory.total_gib:.1f} / {sr.memory.capacity_gib:.1f}")
        console.print(table)
        console.print(f"iteration {best.iteration_time_s:.3f} s, {best.tokens_per_s:,.0f} tokens/s on "
                      f"{best.plan.num_gpus} GPUs ({best.model_tflops_per_gpu:.1f} TFLOP/s per GPU)")
    rep = result.replicas.best if result.replicas else None
    if rep is not None:
        head = "[bold]" if result.recommended == "replicas" else ""
        console.print(f"{head}data-parallel replicas with uneven batch shares: {rep.tokens_per_s:,.0f} tokens/s, "
                      f"iteration {rep.iteration_time_s:.3f} s (cross-replica reduction {rep.cross_reduce_s:.3f} s)"
                      f"{'[/bold]' if head else ''}")
        rt = Table("replica", "GPUs", "batch share", "micro-batches", "replica s", "plan")
        for r, (p, e) in enumerate(zip(rep.plan.replicas, rep.replicas)):
            where = "+".join(rep.plan.group_label(g) for g in rep.plan.groups(r))
            rt.add_row(str(r), (f"{p.num_gpus} x {e.stages[0].gpu}" if len({s.gpu for s in e.stages}) == 1
                                else str(p.num_gpus)) + f" ({where})", str(rep.plan.shares[r]),
                       str(rep.plan.microbatches[r]), f"{e.iteration_time_s:.3f}", p.summary())
        console.print(rt)
    elif result.replicas is not None:
        console.print("[dim]data-parallel replicas: no replica plan fits[/dim]")
    if result.replicas is not None:
        console.print(f"[dim]{result.replicas.family}; {result.replicas.layouts} layouts[/dim]")
    if result.baselines:
        bt = Table("baseline", "tokens/s", "planner's best / baseline", "plan")
        ratios = result.ratios()
        for k, b in result.baselines.items():
            bt.add_row(k, f"{b.tokens_per_s:,.0f}" if b.tokens_per_s else "-",
                       f"{ratios[k]:.3f}" if ratios[k] else "-", b.description)
        console.print(bt)
        console.print(f"recommended: {result.recommended}")
    st = result.search.stats
    console.print(f"[dim]search: {st.structures} structures, {st.candidates} plans expanded, {st.simulated} "
                  f"simulated, {st.seconds:.2f} s ({st.executor} x{st.workers}); pruned {st.pruned}[/dim]")
    if best is None:
        raise typer.Exit(3)             # as `paraplan plan --json` when nothing fits
