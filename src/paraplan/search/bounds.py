"""Lower bounds on a candidate's iteration time and peak memory, for every candidate of a space at once.

Both are provably at most what `paraplan.estimate.estimate` returns for the same candidate, so a candidate whose
bound already loses (slower than the K-th best simulated plan, or more memory than the GPU has) can be dropped
without simulating it. Each bound keeps only terms of the estimate that are sums of non-negative parts:

time   The estimate runs each layer pass at max(host launch time, GPU kernels + exposed communication); the bound
       keeps all of it but ZeRO-3's parameter gathers (they depend on dp; leaving them out only lowers it). In any pipeline schedule rank r cannot start before micro-batch 0 has gone
       forward through virtual stages 0..r-1, works its m micro-batches back to back at best, and its last op (the
       backward of the last micro-batch on its first chunk) is followed by that micro-batch's backward on stages
       r-1..0; the iteration then ends after rank 0's optimizer step. So
           T >= max_r [ sum_{r'<r} (F_r'0 + B_r'0) + m * sum_c (F_rc + B_rc) ] + min_r optimizer_r + overhead,
       F_rc, B_rc the forward/backward of chunk c on rank r for one micro-batch (embedding on
       stage 0, LM head on the last). For an even 1F1B pipeline this is exactly (m + pp - 1)(t_f + t_b).
memory Model states (weights, gradients, optimizer state by ZeRO stage) on each rank, plus the stored activations
       of the micro-batch chunks the schedule keeps in flight there, plus the framework overhead on them.
"""
from __future__ import annotations

import numpy as np

from paraplan.cost import compute, memory
from paraplan.cost.calibration import Calibration
from paraplan.estimate import layer_passes
from paraplan.frameworks import conventions_for
from paraplan.search.space import StrategyColumns, candidate_strategy
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Strategy
from paraplan.specs.strategy import RECOMPUTE_MODES


def _groups(*columns: np.ndarray):
    """(unique rows, inverse index) of the candidates' key columns (mixed-radix codes: np.unique on rows is slow)."""
    cols = [np.asarray(c, dtype=np.int64) for c in columns]
    code = np.zeros(len(cols[0]), dtype=np.int64)
    for c in cols:
        code = code * (int(c.max()) + 1 if len(c) else 1) + c
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    return np.stack([c[first] for c in cols], axis=1), inverse.reshape(-1)


def _strategy(job: JobSpec, **fields) -> Strategy:
    return candidate_strategy(job.framework, job.precision, **fields)


_RECOMPUTE_CODE = {mode: i for i, mode in enumerate(RECOMPUTE_MODES)}


def _first_layers(model: ModelSpec) -> dict[bool, int]:
    """The first layer of each kind the model has: {is MoE: index}."""
    first: dict[bool, int] = {}
    for i in range(model.layers):
        first.setdefault(model.is_moe_layer(i), i)
    return first


def _inflight(cand, rows, job, pp: int, vpp: int) -> np.ndarray:
    """[candidate, rank] peak micro-batch-chunks in flight: memory.closed_form_inflight, which equals what the
    simulator's schedules hold (sim.engine.peak_inflight; checked in tests/test_search.py)."""
    m = cand.num_microbatches(job.global_batch)[rows, None]
    r = np.arange(pp)[None, :]
    if vpp > 1:
        return np.minimum(2 * (pp - r - 1) + (vpp - 1) * pp + 1, m * vpp)
    return np.minimum(pp - r, m)


class Bounds:
    """time_s[i], memory_gib[i]: lower bounds for candidate i of `cand`."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, job: JobSpec, cal: Calibration, cand: StrategyColumns,
                 cache: dict | None = None):
        self.model, self.cluster, self.job, self.cal = model, cluster, job, cal
        self.cache = {} if cache is None else cache           # estimate's layer_cache, shared with the search
        n = len(cand)
        self.capacity_gib = cluster.gpu.hbm_gib * (1 - job.memory_headroom)
        self.time_s = np.full(n, np.inf)                     # candidates over the memory bound keep inf
        self.memory_gib = np.zeros(n)
        if n == 0:
            return
        rc = np.vectorize(_RECOMPUTE_CODE.get, otypes=[np.int64])(cand.recompute)
        sp = cand.sequence_parallel.astype(np.int64)
        etp = cand.expert_tp
        # one entry per distinct (tp, cp, micro-batch, SP, recompute, ep, expert TP): what a layer stores and takes
        keys, inv = _groups(cand.tp, cand.cp, cand.micro_batch, sp, rc, cand.ep, etp)
        key_strategies = [
            _strategy(job, tp=int(tp), cp=int(cp), micro_batch=int(mb), sequence_parallel=bool(spk), ep=int(ep),
                      recompute=RECOMPUTE_MODES[int(rck)], dp=int(ep) if int(etpk) == int(tp) else 1)  # dp: expert TP
            for tp, cp, mb, spk, rck, ep, etpk in keys]
        act = np.array([(memory.activation_bytes_per_layer(model, job, s),
                         memory.activation_bytes_per_layer(model, job, s, moe_layer=True) if model.moe else 0.0)
                        for s in key_strategies])
        act_dense, act_moe = act[inv, 0], act[inv, 1]
        layouts, lay_inv = _groups(cand.tp, cand.pp, cand.vpp, cand.ep, etp)
        layout = [self._layout(*map(int, row)) for row in layouts]
        conv = conventions_for(job.framework)
        for k, (dense_count, moe_count, params) in enumerate(layout):
            self._memory(np.flatnonzero(lay_inv == k), cand, dense_count, moe_count, params, act_dense, act_moe, conv)

        # time, only where the memory bound leaves a chance: per key, forward + backward of a dense and an MoE
        # layer with their communication, except ZeRO-3's gathers (leaving them out only lowers the bound)
        feasible = self.memory_gib <= self.capacity_gib * (1 + 1e-9)
        layer_fb = np.zeros((len(keys), 2))          # [key, moe]
        emb_head = np.zeros((len(keys), 2))          # [key, (embedding f+b, head f+b)]
        kinds = _first_layers(model)
        for k in np.unique(inv[feasible]):
            s = key_strategies[k]
            for moe, first in kinds.items():
                fwd, bwd, _ = layer_passes(model, job, s, cluster, cal, first, self.cache)
                layer_fb[k, int(moe)] = fwd.time_s + bwd.time_s
            emb_head[k] = (sum(compute.embedding_time(model, job, s, cluster.gpu, cal)),
                           sum(compute.head_time(model, job, s, cluster.gpu, cal)))
        pass_dense = layer_fb[inv, 0]
        pass_moe = layer_fb[inv, 1] if model.moe else pass_dense
        emb, head = emb_head[inv, 0], emb_head[inv, 1]
        m = cand.num_microbatches(job.global_batch).astype(float)
        for k, (dense_count, moe_count, params) in enumerate(layout):
            rows = np.flatnonzero((lay_inv == k) & feasible)
            if len(rows):
                self._time(rows, cand, dense_count, moe_count, params, pass_dense, pass_moe, emb, head, m)

    def _layout(self, tp: int, pp: int, vpp: int, ep: int, etp: int):
        """[rank, chunk] dense and MoE layer counts and [rank, (dense, expert)] parameters of one layout."""
        model = self.model
        s = _strategy(self.job, tp=tp, pp=pp, vpp=vpp, ep=ep, dp=ep if etp == tp else 1)
        chunks = memory.stage_layers(model, s)                          # rank-major: entry r*vpp + c
        moe_count = np.array([[sum(model.is_moe_layer(i) for i in chunks[r * vpp + c]) for c in range(vpp)]
                              for r in range(pp)], dtype=float)
        all_count = np.array([[len(chunks[r * vpp + c]) for c in range(vpp)] for r in range(pp)], dtype=float)
        return all_count - moe_count, moe_count, np.array(memory.params_by_rank(model, s))

    def _time(self, rows, cand, dense_count, moe_count, params, pass_dense, pass_moe, emb, head, m):
        cal, vpp = self.cal, dense_count.shape[1]
        pd, pmoe = pass_dense[rows, None], pass_moe[rows, None]                    # [cand, 1]
        chunk0 = dense_count[None, :, 0] * pd + moe_count[None, :, 0] * pmoe       # [cand, rank]
        chunk0 = chunk0 + cal.microbatch_overhead_s / vpp
        chunk0[:, 0] += emb[rows]
        busy = dense_count.sum(1)[None, :] * pd + moe_count.sum(1)[None, :] * pmoe + cal.microbatch_overhead_s
        busy[:, 0] += emb[rows]
        busy[:, -1] += head[rows]
        prefix = np.cumsum(chunk0, axis=1) - chunk0                                # sum over r' < r
        pipeline = (prefix + m[rows, None] * busy).max(axis=1)
        zero, dp, cp, edp = cand.zero[rows, None], cand.dp[rows, None], cand.cp[rows, None], cand.expert_dp[rows, None]
        dense_p, expert_p = params[None, :, 0], params[None, :, 1]
        shard = np.where(zero >= 1, dense_p / (dp * cp) + expert_p / edp, dense_p + expert_p)
        optimizer = compute.optimizer_time(shard, self.cluster.gpu, cal).min(axis=1)
        self.time_s[rows] = pipeline + optimizer + cal.iteration_overhead_s

    def _memory(self, rows, cand, dense_count, moe_count, params, act_dense, act_moe, conv):
        fw, precision, vpp = self.job.framework, self.job.precision, dense_count.shape[1]
        zero = cand.zero[rows, None]
        m = cand.num_microbatches(self.job.global_batch)[rows, None]
        wd, gd, od = memory.state_bytes_per_param(fw, zero, (cand.dp * cand.cp)[rows, None], precision, m)
        we, ge, oe = memory.state_bytes_per_param(fw, zero, cand.expert_dp[rows, None], precision, m)
        dense_p, expert_p = params[None, :, 0], params[None, :, 1]
        states = dense_p * (wd + gd + od) + expert_p * (we + ge + oe)
        if self.job.precision == "fp8":
            states = states + np.where(zero >= 3, 0.0, dense_p + expert_p)          # TE fp8 weight copy
        one_chunk = (dense_count.sum(1)[None, :] * act_dense[rows, None]
                     + moe_count.sum(1)[None, :] * act_moe[rows, None]) / vpp
        total = states + one_chunk * _inflight(cand, rows, self.job, dense_count.shape[0], vpp) * (1 + conv.overhead_fraction)
        self.memory_gib[rows] = total.max(axis=1) / memory.GIB + conv.overhead_fixed_gib
