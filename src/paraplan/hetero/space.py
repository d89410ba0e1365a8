"""The space of heterogeneous plans, as *structures* bounded from below before any plan is built.

A structure picks, for each node group, either nothing or one stage shape (tp, dp) that tiles the whole group
into k = group GPUs / (tp * cp * dp) pipeline stages, plus the micro-batch (sequences per pipeline micro-batch), the
ZeRO stage, the recompute mode, the plan's context-parallel degree cp and its interleaving vpp (both where the
framework has them: framework_limits; each stage shape passes the homogeneous validity rules, e.g. the sequence
divisible by 2 * cp; with vpp > 1 the micro-batches are a multiple of the stage count and every stage has vpp
layers). A structure expands into plans by the order of its groups along the pipeline
(every permutation, or fastest GPU type first) and the layer split (balanced by speed and memory, by peak compute
as Metis does, or even). Stage sizes divide or are multiples of a node, so TP and DP groups stay inside nodes
when they can.

Bounds (valid for every plan of a structure, whatever its order and split):
- time: 1F1B runs each stage's m micro-batches back to back at best, so the iteration takes at least
  m * max_i(L_i t_i + e_i) >= m * relaxed_bottleneck (balance.py), t_i a stage's seconds per layer per micro-batch
  (interleaved or not); without interleaving also kappa x the sum of the stages' work (time_bounds);
- memory: a stage with L layers holds at least their weights, gradients and optimizer state plus one micro-batch
  of their activations (the last stage's in-flight count; interleaved, the last stage still holds every one of its
  chunks once at the end of its warm-up, (vpp - 1) * pp + 1 chunks, Megatron schedules.py) and the framework's
  fixed overhead; if the stages together cannot hold the model's layers that way, no split fits.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from paraplan.cost import memory
from paraplan.estimate import MAX_MICROBATCHES
from paraplan.frameworks import conventions_for, framework_limits
from paraplan.hetero.estimate import HeteroContext
from paraplan.search.space import divisors
from paraplan.specs.strategy import RECOMPUTE_MODES, violations

GIB = 1024 ** 3
SPLITS = ("balanced", "power", "even")


@dataclass(frozen=True)
class SpaceOptions:
    tp: tuple[int, ...] = (1, 2, 4, 8)
    zero: tuple[int, ...] = (0, 1)
    recompute: tuple[str, ...] = RECOMPUTE_MODES
    splits: tuple[str, ...] = SPLITS
    orders: str = "all"                 # "all" permutations of the groups used, or "by_speed" (fastest first)
    max_gpu_micro_batch: int = 4        # sequences per GPU per micro-batch
    max_stages: int = 64
    same_shape: bool = False            # every group uses the same (tp, dp) (a plain Megatron grid)
    all_groups: bool = False            # every node group is used
    cp: tuple[int, ...] = (1, 2)        # context-parallel degrees (one per plan)
    vpp: tuple[int, ...] = (1, 2)       # virtual stages per stage (interleaving)


@dataclass(frozen=True)
class Structure:
    mb: int                             # sequences per pipeline micro-batch
    zero: int
    recompute: str
    shapes: tuple                       # per node group: None (unused) or (tp, dp)
    cp: int = 1
    vpp: int = 1

    def stages_of(self, cluster, group: int) -> int:
        tp, dp = self.shapes[group]
        return cluster.node_groups[group].num_gpus // (tp * self.cp * dp)

    def used(self) -> tuple[int, ...]:
        return tuple(g for g, s in enumerate(self.shapes) if s is not None)


def group_speed(cluster, group: int, precision: str) -> float:
    return cluster.node_groups[group].gpu.peak(precision)


def orders_of(ctx: HeteroContext, st: Structure, how: str) -> list[tuple[int, ...]]:
    used = st.used()
    by_speed = tuple(sorted(used, key=lambda g: (-group_speed(ctx.cluster, g, ctx.job.precision), g)))
    if how == "by_speed":
        return [by_speed]
    return [by_speed] + [p for p in itertools.permutations(used) if p != by_speed]


def _shapes(ctx: HeteroContext, group: int, opts: SpaceOptions, cp: int = 1) -> list[tuple[int, int]]:
    g, model = ctx.cluster.node_groups[group], ctx.model
    out = []
    for tp in opts.tp:
        for n in divisors(g.num_gpus):
            if n % (tp * cp) or (n % g.gpus_per_node and g.gpus_per_node % n):
                continue
            k = g.num_gpus // n
            if k > min(model.layers, opts.max_stages):
                continue
            dp = n // (tp * cp)
            if ctx.job.global_batch % dp:          # a micro-batch (a divisor of the batch) splits over dp
                continue
            # the homogeneous rules of one such stage (tp vs heads, sequence vs 2*cp, the framework's options)
            v = ctx.view(group, tp, dp, 1, dp, 0, "none", None, cp)
            if violations(v.strategy, model, v.cluster, v.job):
                continue
            out.append((tp, dp))
    return out


def _layer_memory_floor(ctx: HeteroContext, group: int, tp: int, dp: int, mb_gpu: int, zero: int,
                        recompute: str, cp: int = 1) -> tuple[float, float]:
    """(bytes per layer at least, fixed bytes at least) on one GPU of a stage of this shape (see module doc)."""
    s = ctx.strategy(tp, dp, 1, mb_gpu, zero, recompute, None, cp)
    job = ctx.job
    wgo = sum(memory.state_bytes_per_param(job.framework, zero, dp * cp, job.precision))   # sharded over dp x cp
    per_layer = min(sum(memory.layer_params_on_gpu(ctx.model, s, i)) * wgo
                    + memory.activation_bytes_per_layer(ctx.model, job, s, mb_gpu, ctx.model.is_moe_layer(i))
                    for i in {0, ctx.model.layers - 1})
    return per_layer, conventions_for(job.framework).overhead_fixed_gib * GIB


def build(ctx: HeteroContext, opts: SpaceOptions):
    """Every structure that passes the memory bound, with its time bound: (bounds array, list of Structure),
    and the counts of what was generated and pruned."""
    cluster, job, model = ctx.cluster, ctx.job, ctx.model
    ngroups = len(cluster.node_groups)
    lim = framework_limits(job.framework)
    zeros = [z for z in opts.zero if z in lim.zero_with_pp and z in lim.zero]
    cps = [c for c in opts.cp if c == 1 or lim.context_parallel]
    vpps = [v for v in opts.vpp if v == 1 or lim.interleaved]
    rows_k, rows_t, rows_e, rows_m, rows_o, rows_v, structures = [], [], [], [], [], [], []
    generated = pruned_mem = 0
    for cp in cps:
        shapes = [_shapes(ctx, g, opts, cp) for g in range(ngroups)]
        for mb in divisors(job.global_batch):
            m = job.global_batch // mb
            if m > MAX_MICROBATCHES:
                continue
            for zero, rc in itertools.product(zeros, opts.recompute):
                per_group = _group_rows(ctx, opts, shapes, mb, zero, rc, cp)
                for combo in itertools.product(*per_group):
                    used = [r for r in combo if r[0] is not None]
                    if not used:
                        continue
                    if opts.all_groups and len(used) != ngroups:
                        continue
                    if opts.same_shape and len({r[0] for r in used}) > 1:
                        continue
                    stages = sum(r[1] for r in used)
                    if stages > min(model.layers, opts.max_stages):
                        continue
                    for vpp in vpps:
                        # Megatron's interleaving: pp >= 2, micro-batches a multiple of pp, vpp layers per stage
                        if vpp > 1 and (stages < 2 or m % stages or stages * vpp > model.layers):
                            continue
                        generated += 1
                        if sum(r[4] for r in used) < model.layers or any(r[4] < r[1] * vpp for r in used):
                            pruned_mem += 1
                            continue
                        overhead = max(ctx.cals[g].iteration_overhead_s for g, r in enumerate(combo)
                                       if r[0] is not None)
                        rows_k.append([r[1] for r in combo])
                        rows_t.append([r[2] if r[0] is not None else 1.0 for r in combo])
                        rows_e.append([r[3] for r in combo])
                        rows_m.append(m)
                        rows_o.append(overhead)
                        rows_v.append(vpp)
                        structures.append(Structure(mb, zero, rc, tuple(r[0] for r in combo), cp, vpp))
    shape = (-1, ngroups)
    bounds = time_bounds(np.asarray(rows_k, float).reshape(shape), np.asarray(rows_t, float).reshape(shape),
                         np.asarray(rows_e, float).reshape(shape), np.asarray(rows_m, float), model.layers,
                         interleaved=np.asarray(rows_v, float))
    return bounds + np.asarray(rows_o, float), structures, {"generated": generated, "memory_bound": pruned_mem}


def _group_rows(ctx: HeteroContext, opts: SpaceOptions, shapes, mb: int, zero: int, rc: str, cp: int) -> list:
    """Per node group: unused, or each shape usable with this micro-batch, as (shape, stages, seconds per layer,
    seconds besides layers, layers its stages can hold at most)."""
    cluster, job, model = ctx.cluster, ctx.job, ctx.model
    per_group = []
    for g in range(len(cluster.node_groups)):
        rows = [(None, 0, 0.0, 0.0, 0)]            # unused
        cap_gib = cluster.node_groups[g].gpu.hbm_gib * (1 - job.memory_headroom) * GIB
        for tp, dp in shapes[g]:
            if mb % dp or mb // dp > opts.max_gpu_micro_batch:
                continue
            k = cluster.node_groups[g].num_gpus // (tp * cp * dp)
            t = ctx.layer_time(g, tp, dp, mb, zero, rc, cp)
            e = ctx.cals[g].microbatch_overhead_s
            per_layer, fixed = _layer_memory_floor(ctx, g, tp, dp, mb // dp, zero, rc, cp)
            cap = max(0, int((cap_gib - fixed) // per_layer)) if per_layer > 0 else model.layers
            rows.append(((tp, dp), k, t, e, k * min(cap, model.layers)))
        per_group.append(rows)
    return per_group


def time_bounds(k, t, e, m, layers: int, iterations: int = 40, interleaved=None) -> np.ndarray:
    """Lower bound on the iteration time (before overheads) of every plan of each structure (rows; columns are node
    groups: k stages, t seconds per layer, e seconds besides layers, per micro-batch).

    Any plan takes at least max_r(S_r + m c_r) (c_r: stage r's work per micro-batch, S_r: the stages' before it;
    search.plan_bound). Weighting the P terms by w_r proportional to (1 - 1/m)^(P-1-r) gives the same coefficient
    kappa = 1 / (1 - (1 - 1/m)^P) on every c_j, so a plan takes at least both m * max_r c_r and kappa * sum_r c_r.
    Over all (even fractional) splits whose slowest stage is at most Y, sum_r c_r is smallest when the fastest
    stages are filled first; the bound is the smallest max(m Y, kappa * that sum) over Y, found by bisection.

    Interleaved rows (`interleaved`: vpp per row, 1 = not): micro-batch 0 passes only the earlier stages' first
    chunks, at least floor(L_j / vpp) t_j >= beta (c_j - e_j - (vpp - 1) t_j) each (beta = 1 / vpp), so a plan
    takes at least max_r(beta S_r + m c_r) - beta D, D = sum_j (e_j + (vpp - 1) t_j) over all stages (fixed by the
    structure). The same weights with m / beta in place of m give beta * kappa(m / beta) on every c_j (the
    argument holds for any real m >= 1)."""
    P = k.sum(axis=1)
    vpp = np.ones_like(m) if interleaved is None else np.asarray(interleaved, float)
    beta = 1.0 / vpp
    kappa = beta / (1.0 - (1.0 - beta / m) ** P)
    offset = beta * ((k * e).sum(axis=1) + (vpp - 1) * (k * t).sum(axis=1)) * (vpp > 1)
    rate = (k / t).sum(axis=1)
    y_lo = (layers + (k * e / t).sum(axis=1)) / rate          # the relaxed bottleneck T*
    y_lo = np.maximum(y_lo, np.where(k > 0, t + e, 0).max(axis=1))
    by_speed = np.argsort(t + np.where(k > 0, 0, np.inf), axis=1)
    ks, ts, es = (np.take_along_axis(a, by_speed, axis=1) for a in (k, t, e))
    edge = (k * e).sum(axis=1)

    def min_total(y):
        room = np.where(ks > 0, ks * np.maximum(0.0, (y[:, None] - es) / ts), 0.0)   # layers each group can take
        before = np.cumsum(room, axis=1) - room
        take = np.clip(layers - before, 0.0, room)
        return edge + (take * ts).sum(axis=1)

    lo = y_lo.copy()
    hi = np.maximum(lo, (kappa * min_total(lo) - offset) / m)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = kappa * min_total(mid) - offset > m * mid
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    # below lo the sum term is at least kappa * min_total(lo) - offset > m * lo; above it m * Y > m * lo
    return m * lo


__all__ = ["SpaceOptions", "Structure", "build", "orders_of", "SPLITS"]
