"""`paraplan seqpar`: plan variable-length batches with adaptive sequence-parallel groups (FlexSP) and compare the
plan with static Ulysses SP, static Megatron-style CP and the per-batch best homogeneous degree."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from paraplan.cli import _fail, app, console
from paraplan.errors import ParaplanError

SHOW_SEQUENCES_UP_TO = 64      # list which sequences each group runs for batches this small (all of them: --json)


@app.command()
def seqpar(
    model: str = typer.Option(..., help="preset name, Hugging Face config.json or YAML/JSON model file"),
    cluster: str = typer.Option(..., help="cluster preset (NAME:GPUS) or YAML/JSON file"),
    lengths: Optional[str] = typer.Option(None, help="file of sequence lengths, one per line; a blank line or "
                                                     "'---' starts the next batch"),
    distribution: Optional[str] = typer.Option(None, help="sample the batches from a shipped length distribution "
                                                          "(wikipedia, commoncrawl, github)"),
    batch_size: int = typer.Option(512, "--batch-size", help="sequences per batch when sampling"),
    batches: int = typer.Option(1, help="batches to sample"),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="maximum context: sampled sequences above it are "
                                          "dropped; static baselines must hold it (default: longest given)"),
    seed: int = typer.Option(0, help="sampling seed"),
    solver: str = typer.Option("fast", help="fast (greedy + local search, ms) or milp (HiGHS, up to 10 s per "
                                            "micro-batch and micro-batch count tried)"),
    framework: str = typer.Option("deepspeed", help="framework whose calibration and memory conventions apply"),
    recompute: str = typer.Option("none", help="activation recomputation: none, selective or full"),
    sizes: str = typer.Option("pow2", help="group sizes: pow2 (FlexSP) or any (node divisors and whole nodes)"),
    ring: bool = typer.Option(False, "--ring/--no-ring", help="also Ulysses x ring (USP) group shapes"),
    max_tokens_per_rank: Optional[int] = typer.Option(None, "--max-tokens-per-rank",
                                                      help="override the memory model's token limit per GPU"),
    memory_limit_gib: Optional[float] = typer.Option(None, "--memory-limit-gib", help="usable memory per GPU"),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="compare with static layouts"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
):
    """Per-step plan (micro-batches, groups, sequences per group), predicted step time and speed-ups."""
    from paraplan.seqpar import lengths as seqlens
    from paraplan.seqpar.costmodel import build_cost_model
    from paraplan.seqpar.planner import SOLVERS
    from paraplan.seqpar.report import evaluate
    from paraplan.specs.loaders import load_cluster, load_model
    try:
        if (lengths is None) == (distribution is None):
            raise ParaplanError("give exactly one of --lengths FILE or --distribution NAME")
        for name, value in (("--batch-size", batch_size), ("--batches", batches)):
            if value <= 0:
                raise ParaplanError(f"{name} must be a positive integer, got {value}")
        if max_len is not None and max_len <= 0:
            raise ParaplanError(f"--max-len must be a positive integer, got {max_len}")
        if solver not in SOLVERS:
            raise ParaplanError(f"--solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        model_spec, cluster_spec = load_model(model), load_cluster(cluster)
        cost = dict(framework=framework, recompute=recompute, sizes=sizes, ring=ring,
                    max_tokens_per_rank=max_tokens_per_rank, memory_limit_gib=memory_limit_gib)
        if lengths is not None:
            data = seqlens.read_lengths(lengths)
        else:
            if max_len is None:               # FlexSP's shorter context (§6.1), or what the cluster can hold
                capacity = build_cost_model(model_spec, cluster_spec, **cost)
                max_len = min(196_608, capacity.world_size * capacity.tokens_per_rank)
            data = seqlens.sample_batches(distribution, batches, batch_size, max_len, seed)
        report = evaluate(data, model_spec, cluster_spec, max_len=max_len, solver=solver, baselines=baselines,
                          **cost)
    except ParaplanError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
        return
    _print(report)


def _print(report) -> None:
    d = report.cost_model_description
    console.print(f"[bold]{d['gpus']} x {d['gpu']}[/bold] ({d['gpus_per_node']} per node), ZeRO-3, recompute "
                  f"{d['recompute']}: {d['tokens_per_rank']} tokens per GPU ({d['memory_per_token_mib']:.2f} MiB "
                  f"per token), group shapes {', '.join(d['shapes'])}")
    for i, c in enumerate(report.comparisons):
        p = c.flexsp
        table = Table(f"batch {i}: micro-batch", "sequences", "tokens", "groups", "seconds")
        for j, (layout, mb) in enumerate(zip(p.layouts(), p.microbatches)):
            members = [k for _, ms in mb.solution.groups for k in ms]
            table.add_row(str(j), str(len(members)), f"{sum(p.lengths[k] for k in members):,}", layout,
                          f"{mb.time_s:.3f}")
        console.print(table)
        if len(p.lengths) <= SHOW_SEQUENCES_UP_TO:
            for j, mb in enumerate(p.to_step_plan().microbatches):
                for g in mb.groups:
                    if g.sequences:
                        console.print(f"  micro-batch {j}, ranks {g.ranks[0]}-{g.ranks[-1]}: sequences "
                                      + ", ".join(f"{k} ({p.lengths[k]})" for k in g.sequences))
        console.print(f"step {p.step_s:.3f} s, communication {100 * p.comm_share:.1f}% of it, planned in "
                      f"{1e3 * p.planner_s:.0f} ms ({p.solver})")
    s = report.summary
    if "static_ulysses" not in s:
        return
    table = Table("layout", "total seconds", "communication share", "FlexSP speed-up")
    table.add_row("FlexSP (this plan)", f"{s['flexsp_s']:.3f}", f"{100 * s['flexsp_comm_share']:.1f}%", "1.00")
    for key, title in (("static_ulysses", "best static Ulysses SP"), ("static_cp", "best static CP (TP x ring)"),
                       ("batchada", "per-batch best Ulysses degree")):
        b = s.get(key)
        if b is None:
            table.add_row(title, "infeasible", "", "")
            continue
        layout = b.get("layout") or ", ".join(dict.fromkeys(b["layouts"]))
        table.add_row(f"{title} ({layout})", f"{b['total_s']:.3f}", f"{100 * b['comm_share']:.1f}%",
                      f"{b['speedup']:.2f}")
    console.print(table)
    console.print(f"[dim]static layouts must hold a sequence of {report.max_len:,} tokens[/dim]")
