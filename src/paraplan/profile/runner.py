"""The profile sweep: compute benchmarks in this process, collectives in `procs` processes (or the torchrun world),
a time budget, a progress bar, and a partial results file that makes an interrupted sweep resumable.

The partial file (`OUT.partial.jsonl`, next to OUT) holds a header line, then one JSON record per measured point,
appended as soon as it is measured. A rerun with the same device and options skips the points already there.
It is removed once a sweep completes; a sweep cut short by its budget keeps it and writes a profile marked
`complete: false` from what it has.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from paraplan.errors import ParaplanError
from paraplan.profile import comm_bench, compute_bench
from paraplan.profile.fit import profile_document
from paraplan.profile.hardware import write_hardware
from paraplan.profile.sweeps import Sweep

COMPUTE_SHARE = 0.6     # of the budget, while collectives are still to measure
COLLECTIVE_TIMEOUT_S = 120.0
MIN_COLLECTIVE_S = 2.0  # starting the processes alone takes about this long: with less budget left, don't


@dataclass(frozen=True)
class ProfileRun:
    path: Path
    complete: bool
    measured: int           # points measured by this run
    reused: int             # points taken from the partial file of an earlier run
    total: int


class PartialResults:
    """The records measured so far, mirrored to the partial file line by line."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            try:
                found = json.loads(lines[0]) if lines else None
                records = [json.loads(line) for line in lines[1:] if line.strip()]
            except json.JSONDecodeError:
                raise ParaplanError(f"partial results file '{path}' is damaged; delete it to start over") from None
            if found != header:
                raise ParaplanError(f"partial results file '{path}' was measured with other settings ({found}); "
                                    "delete it or rerun with the same device, sweep and --procs")
            self.records = {r["key"]: r for r in records}
        else:
            self._append(header)

    def _append(self, obj: dict) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(obj) + "\n")
        except OSError as exc:
            raise ParaplanError(f"cannot write '{self.path}': {exc.strerror or exc}") from None

    def add(self, record: dict) -> None:
        self.records[record["key"]] = record
        self._append(record)

    def remaining(self, points: list[dict]) -> list[dict]:
        return [p for p in points if p["key"] not in self.records]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParaplanError("--device cuda: torch sees no CUDA GPU; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ParaplanError(f"--device must be auto, cpu or cuda, got '{name}'")
    return torch.device(name)


def _torchrun_world() -> tuple[int, int, int] | None:
    """(rank, world size, ranks per node) when launched by torchrun, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return None


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[point]}"), console=console or Console(stderr=True), transient=True)


def run_profile(out: str | Path, sweep: Sweep, budget_s: float, device_name: str = "auto", procs: int | None = None,
                threads: int | None = None, console: Console | None = None) -> ProfileRun | None:
    """Measure, fit and write the hardware profile to `out`. Under torchrun every rank calls this and rank 0
    writes (the others return None). `threads`: CPU threads of the compute benchmarks (default: torch's; on a
    host shared with other work, 1 avoids threads waiting for each other's time slices)."""
    started = time.monotonic()
    device = resolve_device(device_name)
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    torchrun = _torchrun_world()
    if torchrun:
        rank, world, per_node = torchrun
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=budget_s + 600))
    else:
        rank = 0
        world = procs or (torch.cuda.device_count() if device.type == "cuda" else 2)
        per_node = world
    if world < 1:
        raise ParaplanError(f"--procs must be at least 1, got {world}")
    if device.type == "cuda" and not torchrun and world > torch.cuda.device_count():
        raise ParaplanError(f"--procs {world}: only {torch.cuda.device_count()} CUDA GPUs are visible")

    info = compute_bench.describe_device(device)
    dtype = compute_bench.training_dtype(device)
    info.update(host=socket.gethostname(), dtype=dtype, threads=torch.get_num_threads())
    compute_points = (sweep.memory_points() + sweep.elementwise_points(dtype)
                      + sweep.gemm_points(compute_bench.device_precisions(device))
                      + sweep.attention_points(dtype))
    groups = comm_bench.groups_for(world, per_node) if world > 1 else []
    collective_points = sweep.collective_points(groups)
    out = Path(out)
    header = {"partial_for": {"device": info["name"], "dtype": dtype, "threads": info["threads"],
                              "sweep": sweep.name, "world": world, "ranks_per_node": per_node}}
    partial = PartialResults(out.with_name(out.name + ".partial.jsonl"), header) if rank == 0 else None
    reused = len(partial.records) if partial else 0
    measured = 0

    with _progress(console) if rank == 0 else _NoProgress() as progress:
        # ---- compute, on rank 0 --------------------------------------------------------------------------------
        if rank == 0:
            todo = partial.remaining(compute_points)
            share = COMPUTE_SHARE if partial.remaining(collective_points) else 1.0
            deadline = started + budget_s * share
            task = progress.add_task("compute", total=len(compute_points),
                                     completed=len(compute_points) - len(todo), point="")
            for point in todo:
                if time.monotonic() > deadline:
                    break
                progress.update(task, point=point["key"])
                partial.add(compute_bench.run_point(point, device, sweep.repeats, sweep.min_sample_s))
                measured += 1
                progress.advance(task)
            progress.update(task, point="")
        # ---- collectives, on every rank ------------------------------------------------------------------------
        if world > 1:
            todo = partial.remaining(collective_points) if rank == 0 else None
            seconds_left = max(0.0, budget_s - (time.monotonic() - started))
            task = progress.add_task("collectives", total=len(collective_points),
                                     completed=len(collective_points) - len(todo or []), point="")

            def on_result(record: dict) -> None:
                nonlocal measured
                partial.add(record)
                measured += 1
                progress.update(task, advance=1, point=record["key"])

            if torchrun:
                shared = [todo, seconds_left]
                dist.broadcast_object_list(shared, src=0)
                comm_bench.collective_sweep(shared[0], device, shared[1], sweep.repeats, sweep.min_sample_s,
                                            on_result if rank == 0 else None)
            elif todo and seconds_left > MIN_COLLECTIVE_S:
                comm_bench.launch_local(todo, world, device.type, seconds_left, sweep.repeats, sweep.min_sample_s,
                                        on_result, timeout_s=COLLECTIVE_TIMEOUT_S)
            progress.update(task, point="")
    if torchrun:
        dist.destroy_process_group()
    if rank != 0:
        return None

    all_points = compute_points + collective_points
    complete = not partial.remaining(all_points)
    records = [partial.records[p["key"]] for p in all_points if p["key"] in partial.records]
    try:
        document = profile_document(records, info, complete, world, per_node,
                                    "nccl" if device.type == "cuda" else "gloo", software_versions())
    except ParaplanError as exc:
        if complete:
            raise
        raise ParaplanError(f"{exc} before the budget ran out; {len(records)} of {len(all_points)} points are "
                            f"saved in '{partial.path}': rerun the same command to continue") from None
    write_hardware(document, out)
    if complete:
        partial.path.unlink(missing_ok=True)
    return ProfileRun(out, complete, measured, reused, len(all_points))


def software_versions() -> dict:
    nccl = None
    if torch.cuda.is_available():
        try:
            nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
        except (AttributeError, RuntimeError):
            nccl = None
    return {"python": platform.python_version(), "torch": str(torch.__version__), "cuda": torch.version.cuda,
            "nccl": nccl}


class _NoProgress:
    """The progress bar's interface for ranks other than 0, which print nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass

    def advance(self, *args, **kwargs):
        pass
