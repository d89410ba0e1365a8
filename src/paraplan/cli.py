"""`paraplan` command line: a thin typer app over paraplan.api.

Every error is one line on stderr starting with `error:`, never a traceback: bad input (ours or typer's own usage
errors) exits 2; an unexpected exception inside paraplan exits 1 and says it is a bug."""
from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

try:
    from typer import TyperException as _UsageError    # typer >= 0.20 vendors click; its errors derive from this
except ImportError:  # pragma: no cover - older typer on top of click
    from click import ClickException as _UsageError

from paraplan import api
from paraplan.errors import ParaplanError
from paraplan.validate.score import summary


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class _OneLineErrors(TyperGroup):
    """Runs a command and turns whatever escapes it into one `error: ...` line on stderr and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _UsageError as exc:              # typer's usage errors: unknown option, value of the wrong type...
            message, code = exc.format_message(), getattr(exc, "exit_code", 2)
            if type(exc).__name__ == "NoArgsIsHelpError":   # bare `paraplan`: typer has printed the help already
                if message.strip():
                    typer.echo(message)
                sys.exit(code)
            command = getattr(getattr(exc, "ctx", None), "command_path", None)
            hint = f" (see '{command} --help')" if command else ""
            typer.echo(f"error: {_one_line(message)}{hint}", err=True)
            sys.exit(code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        except ParaplanError as exc:            # anything that slipped past a command's own handling
            typer.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)
        except Exception as exc:  # noqa: BLE001 - the one-line contract holds for our own bugs too
            typer.echo(f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
                       "this is a paraplan bug, please report it with the command line", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)   # an int here is the code of a typer.Exit


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Plan, simulate and validate hybrid-parallel LLM training strategies.")
# Piped or redirected output has no terminal width; rich would then cut tables to 80 columns and ellipsise the
# plans, so it gets room for the widest table instead (COLUMNS, when set, still wins).
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)


def _fail(message: str) -> None:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(2)


@app.command()
def estimate(
    model: Optional[str] = typer.Option(None, help="preset name, Hugging Face config.json or YAML/JSON model file"),
    cluster: Optional[str] = typer.Option(None, help="cluster preset (NAME or NAME:GPUS) or YAML/JSON file"),
    strategy: str = typer.Option("", help="e.g. tp=8,pp=4,dp=2,mbs=1,zero=1,recompute=selective,sp=true,vpp=2"),
    global_batch: Optional[int] = typer.Option(None, "--global-batch", help="sequences per optimizer step"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="tokens per sequence"),
    precision: str = typer.Option("bf16", help="fp16, bf16 or fp8"),
    framework: str = typer.Option("megatron-lm", help="megatron-lm, nemo, megatron-deepspeed, torchtitan, deepspeed, maxtext, other"),
    runs: Optional[str] = typer.Option(None, help="measured-runs CSV: estimate every row instead"),
    hardware: Optional[str] = typer.Option(None, help="hardware profile from `paraplan profile`: its measured "
                                           "GPU, links and efficiencies replace the catalog's (--cluster optional)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
):
    """Estimate iteration time, its breakdown and memory per GPU for one strategy (or every row of --runs)."""
    try:
        if runs and hardware:
            _fail("--hardware does not apply to --runs (each row names its own GPU and cluster)")
        if runs:
            results = api.estimate_runs(runs)
            if as_json:
                typer.echo(json.dumps([api.run_result_dict(r) for r in results], indent=1))
            else:
                table = Table("id", "predicted s", "memory GiB", "note")
                for r in results:
                    table.add_row(r.id, f"{r.predicted_s:.3f}" if r.predicted_s else "-",
                                  f"{r.memory_gib:.1f}" if r.memory_gib else "-", r.error or "; ".join(r.assumptions))
                console.print(table)
            return
        missing = [name for name, v in (("--model", model), ("--cluster", cluster or hardware),
                                        ("--global-batch", global_batch), ("--seq-len", seq_len)) if v is None]
        if missing:
            _fail(f"missing {', '.join(missing)} (or give --runs FILE.csv)")
        api.check_positive(global_batch=global_batch, seq_len=seq_len)
        plan = api.estimate_strategy(model, cluster, strategy, global_batch, seq_len, precision, framework,
                                     hardware=hardware)
    except ParaplanError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(plan.to_dict(), indent=1))
        return
    _print_plan(plan)


def _print_plan(plan) -> None:
    t, mem = plan.time, plan.memory
    console.print(f"[bold]{plan.strategy.describe()}[/bold]")
    if plan.assumptions:
        console.print("[dim]assumed: " + "; ".join(plan.assumptions) + "[/dim]")
    table = Table("part", "seconds", "share")
    total = plan.iteration_time_s
    rows = [("compute (fwd+bwd)", t.compute_s - t.recompute_s), ("recompute", t.recompute_s)]
    rows += [(f"exposed comm: {k}", v) for k, v in sorted(t.exposed_comm_s.items()) if v]
    rows += [("overlap slowdown", t.overlap_slowdown_s), ("pipeline bubble", t.bubble_s),
             ("optimizer step", t.optimizer_s), ("framework overhead", t.overhead_s)]
    for name, v in rows:
        if v:
            table.add_row(name, f"{v:.4f}", f"{100 * v / total:.1f}%")
    table.add_row("[bold]iteration[/bold]", f"[bold]{total:.4f}[/bold]", "")
    console.print(table)
    hidden = ", ".join(f"{k} {v:.4f}s" for k, v in sorted(t.overlapped_comm_s.items()) if v)
    if hidden:
        console.print(f"overlapped communication (hidden): {hidden}")
    mtable = Table("memory per GPU", "GiB")
    for name in ("weights", "gradients", "optimizer", "activations", "transient", "overhead"):
        mtable.add_row(name, f"{getattr(mem, name + '_gib'):.2f}")
    verdict = "[green]fits[/green]" if mem.fits else "[red]DOES NOT FIT[/red]"
    mtable.add_row("[bold]total[/bold]", f"[bold]{mem.total_gib:.2f}[/bold] of {mem.capacity_gib:.1f} ({verdict})")
    console.print(mtable)
    console.print(f"throughput: {plan.tokens_per_s:,.0f} tokens/s, {plan.model_tflops_per_gpu:.1f} TFLOP/s per GPU, "
                  f"MFU {100 * plan.mfu:.1f}%")
    console.print(f"[dim]{plan.flop_formula}[/dim]")


@app.command()
def validate(
    runs: str = typer.Option(..., help="measured-runs CSV (format: data/validation/README.md)"),
    worst: int = typer.Option(10, help="how many of the worst rows to list"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
):
    """Predicted vs measured iteration time for every row: accuracy per row, by source, worst rows."""
    if worst < 0:
        _fail(f"--worst must be 0 or more, got {worst}")
    try:
        results = api.estimate_runs(runs)
    except ParaplanError as exc:
        _fail(str(exc))
    stats = summary(results)
    if as_json:
        stats["rows_detail"] = [{"id": r.id, "measured_s": r.measured_s, "predicted_s": r.predicted_s,
                                 "accuracy": r.accuracy, "error": r.error} for r in results]
        typer.echo(json.dumps(stats, indent=1))
        return
    table = Table("source group", "rows", "modelled", "mean accuracy")
    for group, g in stats["by_group"].items():
        table.add_row(group, str(g["rows"]), str(g["modelled"]), _pct(g["mean_accuracy"]))
    table.add_row("[bold]all[/bold]", str(stats["rows"]), str(stats["modelled"]), f"[bold]{_pct(stats['mean_accuracy'])}[/bold]")
    console.print(table)
    scored = sorted((r for r in results if r.accuracy is not None), key=lambda r: r.accuracy)[:worst]
    if scored:
        wt = Table("worst rows", "measured s", "predicted s", "error")
        for r in scored:
            wt.add_row(r.id, f"{r.measured_s:.3f}", f"{r.predicted_s:.3f}", f"{100 * (r.predicted_s / r.measured_s - 1):+.1f}%")
        console.print(wt)
    failed = [r for r in results if r.error]
    for r in failed[:worst]:
        console.print(f"[yellow]not modelled[/yellow] {r.id}: {r.error}")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


@app.command()
def presets():
    """List the built-in models, GPUs and clusters."""
    from paraplan.specs import loaders
    console.print("[bold]models:[/bold] " + ", ".join(loaders.list_models()))
    console.print("[bold]gpus:[/bold] " + ", ".join(loaders.list_gpus()))
    console.print("[bold]clusters:[/bold] " + ", ".join(loaders.list_clusters()))


# Commands that live beside their feature: each module imports `app` (and `console`, `_fail`) from here and
# decorates its command with @app.command(). Add the module's name to this tuple.
FEATURE_COMMANDS: tuple[str, ...] = ("paraplan.search.cli", "paraplan.profile.cli", "paraplan.seqpar.cli", "paraplan.export.cli",
                                    "paraplan.hetero.cli", "paraplan.network.cli")
for _module in FEATURE_COMMANDS:
    importlib.import_module(_module)


def main() -> None:
    app()       # errors of every kind become one line: see _OneLineErrors


if __name__ == "__main__":
    main()
