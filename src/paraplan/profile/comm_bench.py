"""Collective benchmarks over torch.distributed: gloo on CPU, NCCL on GPUs.

Sizes follow nccl-tests' S (what cost/comm.py's collective_time takes): the all-reduce buffer, the all-gather
output, the reduce-scatter input, one rank's all-to-all send buffer, one send. A sample is the slowest member's
time (a collective ends when its last rank does); timing.typical of the samples is kept.

Launch: `launch_local` spawns the processes on this machine (torch.multiprocessing); under torchrun (one or
several nodes) every rank runs `collective_sweep` itself. Groups are consecutive ranks of 2, 4, ... (TP-like,
within a node first) and, across nodes, one rank per node (DP-like).
"""
from __future__ import annotations

import os
import queue as queue_module
import socket
import time
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from paraplan.errors import ParaplanError
from paraplan.profile.timing import MAX_INNER, synchronize, typical


# torch 2.13 renamed the single-tensor forms (the old names warn)
_ALL_GATHER = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)


def groups_for(world: int, ranks_per_node: int) -> list[tuple[int, int, int]]:
    """(size, stride, nodes) of the groups measured in a world of `world` ranks, `ranks_per_node` per node."""
    groups = []
    size = 2
    while size <= world:
        groups.append((size, 1, -(-size // ranks_per_node)))
        size *= 2
    if world > 2 and world & (world - 1):          # a world that is not a power of two: all of it too
        groups.append((world, 1, -(-world // ranks_per_node)))
    nodes = world // ranks_per_node
    if nodes > 1 and ranks_per_node > 1:
        groups.append((nodes, ranks_per_node, nodes))
    return groups


def _op_fn(op: str, nbytes: int, size: int, member: int, ranks: list[int], group, device: torch.device):
    """The collective as a closure over its buffers (float32 elements; sizes rounded to the group)."""
    elements = max(size, nbytes // 4 // size * size)
    if op == "all_reduce":
        buf = torch.ones(elements, device=device)
        return lambda: dist.all_reduce(buf, group=group)
    if op == "all_gather":
        out = torch.empty(elements, device=device)
        inp = torch.ones(elements // size, device=device)
        return lambda: _ALL_GATHER(out, inp, group=group)
    if op == "reduce_scatter":
        inp = torch.ones(elements, device=device)
        out = torch.empty(elements // size, device=device)
        return lambda: _REDUCE_SCATTER(out, inp, group=group)
    if op == "all_to_all":
        inp = torch.ones(elements, device=device)
        out = torch.empty(elements, device=device)
        return lambda: dist.all_to_all_single(out, inp, group=group)
    if op == "send_recv":                           # one direction: the first member sends to the second
        buf = torch.ones(elements, device=device)
        if member == 0:
            return lambda: dist.send(buf, dst=ranks[1], group=group)
        return lambda: dist.recv(buf, src=ranks[0], group=group)
    raise ParaplanError(f"unknown collective '{op}'")


def _time_collective(fn, group, device: torch.device, repeats: int, min_sample_s: float) -> list[float]:
    def timed(inner: int) -> float:
        dist.barrier(group=group)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        slowest = torch.tensor([(time.perf_counter() - start) / inner], device=device, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
        return float(slowest.item())

    first = timed(1)                                # warm-up; its (agreed) time sets the repeats per sample
    inner = max(1, min(MAX_INNER, int(min_sample_s / max(first, 1e-7))))
    return [timed(inner) for _ in range(repeats)]


def collective_sweep(points: list[dict], device: torch.device, seconds_left: float, repeats: int,
                     min_sample_s: float, report: Callable[[dict], None] | None) -> None:
    """Run `points` on every rank of the initialised world; rank 0 decides when the budget is spent and
    `report`s each record."""
    rank = dist.get_rank()
    deadline = time.monotonic() + seconds_left
    groups = {}
    for key in sorted({(p["size"], p["stride"]) for p in points}):
        size, stride = key
        groups[key] = dist.new_group([i * stride for i in range(size)])
    go = torch.zeros(1, device=device)
    for point in points:
        go.fill_(1.0 if rank == 0 and time.monotonic() < deadline else 0.0)
        dist.broadcast(go, src=0)                  # every rank stops together when rank 0's budget is spent
        if go.item() == 0:
            break
        size, stride = point["size"], point["stride"]
        ranks = [i * stride for i in range(size)]
        if rank in ranks:
            group = groups[(size, stride)]
            fn = _op_fn(point["op"], point["bytes"], size, ranks.index(rank), ranks, group, device)
            samples = _time_collective(fn, group, device, repeats, min_sample_s)
            if rank == 0 and report is not None:
                report({**point, "seconds": typical(samples, device), "samples": samples})
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_worker(rank: int, world: int, port: int, backend: str, device_type: str, points: list[dict],
                    seconds_left: float, repeats: int, min_sample_s: float, timeout_s: float, results) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if device_type == "cpu":
            torch.set_num_threads(1)                # the ranks share the host's cores
            device = torch.device("cpu")
        else:
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
        collective_sweep(points, device, seconds_left, repeats, min_sample_s,
                         (lambda record: results.put(("result", record))) if rank == 0 else None)
        dist.destroy_process_group()
        results.put(("done", rank))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails with one line
        results.put(("error", rank, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"))
        raise SystemExit(1) from None


def launch_local(points: list[dict], world: int, device_type: str, seconds_left: float, repeats: int,
                 min_sample_s: float, on_result: Callable[[dict], None], timeout_s: float = 120.0) -> None:
    """Spawn `world` local processes that run `points`; `on_result` gets each record in this process. A rank that
    dies, or no news for `timeout_s` (a hung collective), stops them all with one ParaplanError."""
    import torch.multiprocessing as mp
    backend = "nccl" if device_type == "cuda" else "gloo"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_spawned_worker, daemon=True,
                         args=(r, world, port, backend, device_type, points, seconds_left, repeats, min_sample_s,
                               timeout_s, results)) for r in range(world)]
    for p in procs:
        p.start()
    done: set[int] = set()
    last_news = time.monotonic()
    try:
        while len(done) < world:
            try:
                message = results.get(timeout=0.5)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in done]
                if dead:
                    raise ParaplanError(f"collective benchmark: rank {dead[0]} exited with code "
                                        f"{procs[dead[0]].exitcode}")
                if time.monotonic() - last_news > timeout_s:
                    raise ParaplanError(f"collective benchmark: no progress for {timeout_s:.0f} s (a collective "
                                        f"hung over {backend}); the points measured so far are kept")
                continue
            last_news = time.monotonic()
            if message[0] == "result":
                on_result(message[1])
            elif message[0] == "done":
                done.add(message[1])
            else:
                raise ParaplanError(f"collective benchmark failed on rank {message[1]} ({backend}): {message[2]}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
