"""`paraplan profile`: the command over profile.runner (measure) and profile.check (compare with a real layer).

torch is imported only when the command runs, so `paraplan` works without it."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from paraplan.cli import _fail, app, console
from paraplan.errors import ParaplanError
from paraplan.profile.hardware import load_hardware
from paraplan.profile.sweeps import sweep_for

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """Seconds from "600", "90s", "10m" or "1h"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ParaplanError(f"--budget must be a positive duration like 600, 90s, 10m or 1h, got '{text}'")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _check_writable(out: Path) -> None:
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ParaplanError(f"--out '{out}' is a directory; give a file name like hw.yaml")
    if not folder.is_dir():
        raise ParaplanError(f"--out '{out}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ParaplanError(f"--out '{out}' is not writable")


@app.command()
def profile(
    out: Optional[str] = typer.Option(None, help="write the hardware profile here (YAML); resumes an interrupted "
                                      "sweep from OUT.partial.jsonl"),
    sweep: Optional[str] = typer.Option(None, help="tiny, cpu or gpu (default: gpu on a CUDA device, else cpu)"),
    budget: str = typer.Option("10m", help="time budget for the measurements, e.g. 600, 90s, 10m, 1h; a sweep "
                               "cut short writes what it has and resumes on the next run"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    procs: Optional[int] = typer.Option(None, help="processes for the collectives (default: the visible GPUs, or "
                                        "2 on CPU); under torchrun, its world"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the compute benchmarks (default: torch's)"),
    check: bool = typer.Option(False, "--check", help="run a real transformer layer forward/backward at a few "
                               "shapes and print the prediction's error per shape"),
    hardware: Optional[str] = typer.Option(None, help="with --check and no --out: the profile to check"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
):
    """Measure this machine (GEMMs, attention, memory, collectives) into a hardware profile for --hardware."""
    try:
        if out is None and not (check and hardware):
            _fail("give --out FILE to profile, or --check --hardware FILE to check a profile")
        if out is not None and hardware is not None:
            _fail("give --out (profile, then check the new file) or --hardware (check an existing file), not both")
        budget_s = parse_budget(budget)
        if sweep is not None:
            sweep_for(sweep)
        for flag, value in (("procs", procs), ("threads", threads)):
            if value is not None and value < 1:
                _fail(f"--{flag} must be a positive integer, got {value}")
        if out is not None:
            _check_writable(Path(out))
        if hardware is not None:
            load_hardware(hardware)                 # a bad file fails before torch is even imported
        try:
            import torch  # noqa: F401
        except ImportError:
            _fail("paraplan profile needs PyTorch: pip install 'paraplan[torch]'")
        from paraplan.profile import runner
        from paraplan.profile.check import check_layers

        if sweep is None:                           # the device measured (--out) or checked (--hardware) decides
            kind = load_hardware(hardware).device.get("kind") if hardware else runner.resolve_device(device).type
            sweep = "gpu" if kind == "cuda" else "cpu"
        chosen = sweep_for(sweep)
        document: dict = {}
        if out is not None:
            run = runner.run_profile(out, chosen, budget_s, device, procs, threads)
            if run is None:                         # a torchrun rank other than 0
                return
            document["profile"] = {"path": str(run.path), "complete": run.complete, "measured": run.measured,
                                   "reused": run.reused, "points": run.total}
            hardware = str(run.path)
        hw = load_hardware(hardware)
        if not as_json and out is not None:
            _print_profile(hw, document["profile"])
        if check:
            results = check_layers(hw, chosen.check_shapes)
            document["check"] = [r.to_dict() for r in results]
            if not as_json:
                _print_check(results)
    except ParaplanError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        kept = f"; the points measured so far are kept in {out}.partial.jsonl: rerun to continue" if out else ""
        typer.echo(f"error: interrupted{kept}", err=True)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(document, indent=1))


def _print_profile(hw, run: dict) -> None:
    cal = hw.overrides
    gpu = hw.gpu
    state = "complete" if run["complete"] else ("[yellow]budget ran out[/yellow]: rerun the same command to "
                                                "measure the rest")
    console.print(f"[bold]{run['path']}[/bold]: {gpu.name} ({hw.device.get('name')}, {hw.device.get('dtype')}), "
                  f"{run['measured']} points measured, {run['reused']} resumed, of {run['points']}; {state}")
    table = Table("quantity", "value")
    peak = gpu.peak("bf16")
    table.add_row("peak GEMM", f"{peak * 1e3:.3g} GFLOP/s" if peak < 1 else f"{peak:.1f} TFLOP/s")
    table.add_row("memory bandwidth", f"{gpu.hbm_gbps:.3g} GB/s")
    for name in ("gemm_efficiency", "gemm_k_half", "attention_efficiency", "attention_seq_half",
                 "attention_backward_ratio", "memory_efficiency", "kernel_floor_s", "collective_latency_s",
                 "comm_half_size_bytes"):
        if name in cal:
            table.add_row(name, f"{cal[name]:.4g}")
    for level, link in hw.links.items():
        table.add_row(f"{level} bus bandwidth", f"{link.bandwidth_gbps:.3g} GB/s")
    table.add_row("curves", f"{len(cal.get('gemm_measured', ()))} GEMM shapes, "
                            f"{len(cal.get('comm_measured', ()))} collective points")
    console.print(table)


def _print_check(results) -> None:
    table = Table("layer", "predicted fwd ms", "measured fwd ms", "predicted bwd ms", "measured bwd ms",
                  "error (fwd+bwd)")
    for r in results:
        table.add_row(r.shape.label, f"{r.predicted_forward_s * 1e3:.3f}", f"{r.measured_forward_s * 1e3:.3f}",
                      f"{r.predicted_backward_s * 1e3:.3f}", f"{r.measured_backward_s * 1e3:.3f}",
                      f"{100 * r.error:+.1f}%")
    console.print(table)
    mean_abs = sum(abs(r.error) for r in results) / len(results)
    console.print(f"mean absolute error: {100 * mean_abs:.1f}% over {len(results)} shapes")
