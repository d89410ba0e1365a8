"""Where candidates are simulated: in this process, in local worker processes, or on a Ray cluster.

Every executor maps `evaluate` over a batch of strategies and returns the results in the batch's order, so a search
gives the same plans whatever the executor and the number of workers.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from paraplan.errors import ParaplanError
from paraplan.estimate import finish, memory_of, prepare, time_lower_bound

EXECUTORS = ("serial", "process", "ray")

_context: dict = {}      # per worker process: the search's model, cluster, job, calibration and layer cache


def _init(model, cluster, job, cal, cache: dict | None = None) -> None:
    _context.update(model=model, cluster=cluster, job=job, cal=cal, cache={} if cache is None else cache)


STAGE_BOUND, OUT_OF_MEMORY = "stage_cost_bound", "out_of_memory"


def evaluate(strategy, threshold: float = float("inf"), skip_unfit: bool = True):
    """The Plan of one candidate in this process's search context; or, without simulating it, STAGE_BOUND when its
    exact stage costs already bound its time above `threshold`, or OUT_OF_MEMORY (with `skip_unfit`) when its
    exact memory, known before the simulation, exceeds the GPU."""
    c = _context
    prep = prepare(c["model"], c["cluster"], c["job"], strategy, calibration=c["cal"], layer_cache=c["cache"])
    if time_lower_bound(prep) > threshold:
        return STAGE_BOUND
    mem = memory_of(c["model"], c["job"], prep, c["cluster"].gpu)
    if skip_unfit and not mem.fits:
        return OUT_OF_MEMORY
    return finish(c["model"], c["cluster"], c["job"], prep, mem=mem)


def _evaluate_batch(strategies, threshold: float = float("inf"), skip_unfit: bool = True):
    return [evaluate(s, threshold, skip_unfit) for s in strategies]


def _deal(items: list, workers: int) -> list[list]:
    """Round-robin shares, so that neighbours in bound order (similar cost) spread over the workers."""
    return [items[w::workers] for w in range(workers)]


def _gather(parts, n: int) -> list:
    """The inverse of _deal: results back in the batch's order."""
    parts = list(parts)
    out = [None] * n
    for w, part in enumerate(parts):
        out[w::len(parts)] = part
    return out


class SerialExecutor:
    name, workers = "serial", 1

    def __init__(self, model, cluster, job, cal, cache=None):
        _init(model, cluster, job, cal, cache)

    def map(self, strategies, threshold=float("inf"), skip_unfit=True):
        return _evaluate_batch(strategies, threshold, skip_unfit)

    def close(self):
        pass


class ProcessExecutor:
    """A pool of local processes, started on the first batch big enough to be worth it."""
    name = "process"

    def __init__(self, model, cluster, job, cal, workers: int | None = None, cache=None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._args = (model, cluster, job, cal)
        self._pool = None
        _init(model, cluster, job, cal, cache)

    def map(self, strategies, threshold=float("inf"), skip_unfit=True):
        if self.workers == 1 or len(strategies) < 2 * self.workers:
            return _evaluate_batch(strategies, threshold, skip_unfit)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, initializer=_init, initargs=self._args)
        chunks = _deal(strategies, self.workers)
        return _gather(self._pool.map(_evaluate_batch, chunks, [threshold] * self.workers,
                                      [skip_unfit] * self.workers), len(strategies))

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()


class RayExecutor:
    """Ray tasks on the cluster at `address` (None: a local Ray instance). Ray is an optional extra."""
    name = "ray"

    def __init__(self, model, cluster, job, cal, workers: int | None = None, address: str | None = None,
                 cache=None):
        try:
            import ray
        except ImportError:
            raise ParaplanError("--executor ray needs Ray: pip install 'paraplan[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": workers or os.cpu_count()}))
        self.workers = max(1, workers or int(ray.cluster_resources().get("CPU", 1)))
        context = ray.put((model, cluster, job, cal))

        @ray.remote
        def batch(ctx, strategies, threshold, skip_unfit):
            _init(*ctx)          # each task brings the search context (Ray keeps the object in its store)
            return _evaluate_batch(strategies, threshold, skip_unfit)

        self._batch, self._ctx = batch, context
        _init(model, cluster, job, cal, cache)

    def map(self, strategies, threshold=float("inf"), skip_unfit=True):
        if len(strategies) < 2 * self.workers:
            return _evaluate_batch(strategies, threshold, skip_unfit)
        chunks = _deal(strategies, self.workers)
        return _gather(self._ray.get([self._batch.remote(self._ctx, c, threshold, skip_unfit) for c in chunks]),
                       len(strategies))

    def close(self):
        pass


def make_executor(name: str, model, cluster, job, cal, workers: int | None = None, address: str | None = None,
                  cache: dict | None = None):
    """`cache`: layer costs this process already has (the bounds'), reused for what it simulates itself."""
    if name == "serial" or (name == "process" and workers == 1):
        return SerialExecutor(model, cluster, job, cal, cache)
    if name == "process":
        return ProcessExecutor(model, cluster, job, cal, workers, cache)
    if name == "ray":
        return RayExecutor(model, cluster, job, cal, workers, address, cache)
    raise ParaplanError(f"unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")
