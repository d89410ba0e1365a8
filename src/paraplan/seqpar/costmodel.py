"""Cost of a sequence-parallel group for one micro-batch, built from paraplan's own models (cost/compute.py,
cost/comm.py, cost/memory.py, the per-GPU calibration), not from fitted constants.

A group of d GPUs has a shape (ulysses u, ring r), u * r = d: Ulysses all-to-all over u contiguous ranks
(DeepSpeed-Ulysses: 4 all-to-alls per layer in forward for Q, K, V and the output, 4 in backward), and a ring of r
(ring attention, K/V blocks passed r - 1 times per layer, overlapped with the attention kernel; USP, Fang & Zhao
2024). Parameters are ZeRO-3-sharded over all N GPUs, so model states do not depend on the layout (FlexSP §4.1.2).

The time of a group in one micro-batch is separable over its sequences, which keeps the MILP linear
(FlexSP eqs. 12-14, with paraplan's terms in place of the fitted alpha/beta):
    group_time = fixed_s[shape] + sum_k seq_cost(s_k, shape)
    seq_cost(s, shape) = (attention_s(s) + linear_s_per_token * s) / d + a2a_s_per_token[shape] * s
                         + ring_exposed_s(s, shape)
attention_s(s): flash attention of the whole sequence on one GPU (quadratic, efficiency rising with s); with
Ulysses each GPU runs heads/u of it, with a ring 1/r of the causal blocks, so 1/d in both cases.
linear_s_per_token: GEMMs, norms, element-wise ops, embedding and LM head per token (GEMM efficiency taken at the
tokens one GPU holds when its memory is full).
All-to-all and p2p times are affine in bytes in paraplan's model (latency + (bytes + half-size) / bandwidth), so
they split exactly into a per-token slope and a per-call fixed part that goes into fixed_s.
Memory: memory.memory_per_gpu is affine in the tokens a GPU holds; a group of d GPUs holds at most
d * tokens_per_rank tokens.
A micro-batch also lasts at least `microbatch_floor_s`: the ZeRO-3 parameter all-gathers (forward and backward) and
gradient reduce-scatters run on their own stream beside compute, and the host must launch every layer.
Approximations, stated: ring overlap is taken per sequence (an upper bound of the packed group's overlap); the
ZeRO-3 traffic is compared with a micro-batch as a whole, not layer by layer; no contention between groups that
cross nodes at the same time.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from paraplan.cost import comm, compute, memory
from paraplan.cost.calibration import calibration_for
from paraplan.errors import ParaplanError
from paraplan.frameworks import grad_reduce_bytes_per_param
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Strategy

RECOMPUTE_MODES = ("none", "selective", "full")
GROUP_SIZE_POLICIES = ("pow2", "any")


@dataclass(frozen=True)
class GroupShape:
    """A sequence-parallel group: `size` GPUs = `ulysses` (head-parallel all-to-all) x `ring` (ring attention)
    x `tensor` (Megatron tensor parallelism with sequence parallelism, innermost; only the static CP baseline
    uses it: Megatron's TP inside a node x CP ring across nodes)."""
    size: int
    ulysses: int
    ring: int
    tensor: int = 1

    @property
    def label(self) -> str:
        if self.tensor > 1:
            return f"{self.size}(tp{self.tensor}xcp{self.ring})"
        if self.ring == 1:
            return str(self.size)
        if self.ulysses == 1:
            return f"{self.size}(ring)"
        return f"{self.size}(u{self.ulysses}xr{self.ring})"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def ulysses_degree_ok(model: ModelSpec, u: int) -> bool:
    """DeepSpeed-Ulysses scatters attention heads: u must divide the query heads, and the K/V heads must either
    shard over u or, with GQA, be replicated to u heads (u a multiple of kv_heads; what seqpar/attention.py does),
    which makes the K/V all-to-all as wide as u heads."""
    return model.heads % u == 0 and (model.kv_heads % u == 0 or u % model.kv_heads == 0)


def group_sizes(world_size: int, gpus_per_node: int, policy: str) -> list[int]:
    """Sizes a group may take. "pow2": FlexSP's powers of two. "any": the divisors of a node (a group inside one
    node) and whole numbers of nodes (e.g. 24, 40, 48 on 8-GPU nodes); both always tile the cluster on contiguous
    rank ranges, so every multiset summing to the world can be placed."""
    if policy not in GROUP_SIZE_POLICIES:
        raise ParaplanError(f"group sizes must be one of {', '.join(GROUP_SIZE_POLICIES)}, got {policy!r}")
    gpn = min(gpus_per_node, world_size)
    if policy == "pow2":
        sizes = [1 << i for i in range(world_size.bit_length()) if (1 << i) <= world_size]
        return [d for d in sizes if d <= gpn or d % gpn == 0]
    within = [d for d in _divisors(gpn)]
    nodes = [k * gpn for k in range(2, world_size // gpn + 1)]
    return within + nodes


def group_shapes(model: ModelSpec, sizes: list[int], gpus_per_node: int, ring: bool) -> list[GroupShape]:
    """For each size, the pure-Ulysses shape when the heads allow it; with `ring`, also Ulysses x ring shapes (USP):
    the largest Ulysses degree that needs no K/V replication (GQA caps it at kv_heads) and the largest inside one
    node (USP's recommended layout: all-to-all on NVLink, ring across nodes)."""
    shapes: list[GroupShape] = []
    for d in sizes:
        valid_u = [u for u in _divisors(d) if ulysses_degree_ok(model, u)]
        options = []
        if valid_u[-1] == d:
            options.append(d)
        if ring:
            options.append(max(u for u in valid_u if model.kv_heads % u == 0))
            options.append(max(u for u in valid_u if u <= gpus_per_node))
        for u in dict.fromkeys(options):
            shapes.append(GroupShape(d, u, d // u))
    return shapes


@dataclass(frozen=True)
class SeqParCostModel:
    """Per-shape coefficients of the group time and the memory limit. Build with `build_cost_model`."""
    world_size: int
    gpus_per_node: int
    shapes: tuple[GroupShape, ...]
    tokens_per_rank: int                  # activation capacity of one GPU (tokens of the micro-batch it holds)
    linear_s_per_token: float             # all layers + embedding + head, fwd + bwd (+ recompute), on one GPU
    a2a_s_per_token: tuple[float, ...]    # per shape: Ulysses all-to-all seconds per token of the sequence
    fixed_s: tuple[float, ...]            # per shape: per-call latency/half-size parts of its collectives
    ring_s_per_token: tuple[float, ...]   # per shape: ring p2p seconds per token (before overlap)
    microbatch_floor_s: float             # ZeRO-3 traffic / host launch bound of one micro-batch
    step_fixed_s: float                   # optimizer step (once per step, the same for every layout)
    _attn_table: tuple = field(repr=False, compare=False, hash=False, default=())
    description: dict = field(default_factory=dict, compare=False, hash=False)

    # ---- per-sequence costs ------------------------------------------------------------------------------------
    def attention_s(self, lengths) -> np.ndarray:
        """Flash attention (all layers, fwd + bwd + recompute) of whole sequences on one GPU, interpolated in
        log-length from an exact table (the kernel's efficiency depends on the length)."""
        xs, ys = self._attn_table
        s = np.maximum(np.asarray(lengths, dtype=float), 1.0)
        # attention time / s^2 varies slowly with log s: interpolate that, exact at the table points
        return np.interp(np.log(s), xs, ys) * s * s

    def capacity(self, shape_index: int) -> int:
        return self.shapes[shape_index].size * self.tokens_per_rank

    @property
    def capacities(self) -> np.ndarray:
        return np.array([s.size * self.tokens_per_rank for s in self.shapes], dtype=float)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([s.size for s in self.shapes], dtype=int)

    def cost_matrix(self, lengths) -> np.ndarray:
        """seconds[k, t]: what sequence k adds to a group of shape t (inf where it does not fit in memory)."""
        s = np.asarray(lengths, dtype=float)
        attn = self.attention_s(s)
        d = self.sizes.astype(float)
        a2a = np.asarray(self.a2a_s_per_token)
        ring = np.asarray(self.ring_s_per_token)
        compute_part = (attn[:, None] + self.linear_s_per_token * s[:, None]) / d[None, :]
        attn_part = attn[:, None] / d[None, :]
        # the ring's K/V passes hide behind this rank's share of the attention kernel
        ring_exposed = np.maximum(0.0, ring[None, :] * s[:, None] - attn_part)
        cost = compute_part + a2a[None, :] * s[:, None] + ring_exposed
        return np.where(s[:, None] <= self.capacities[None, :], cost, np.inf)

    def breakdown(self, lengths, shape_index: int) -> dict:
        """Seconds of a group of this shape holding these sequences, split into compute and communication."""
        s = np.asarray(lengths, dtype=float)
        shape = self.shapes[shape_index]
        attn = self.attention_s(s)
        comp = float(np.sum(attn + self.linear_s_per_token * s)) / shape.size
        a2a = float(np.sum(s)) * self.a2a_s_per_token[shape_index]
        ring = float(np.sum(np.maximum(0.0, self.ring_s_per_token[shape_index] * s - attn / shape.size)))
        fixed = self.fixed_s[shape_index] if len(s) else 0.0
        return {"compute_s": comp, "comm_s": a2a + ring + fixed, "total_s": comp + a2a + ring + fixed}

    def min_shape_size(self, length: int) -> int | None:
        fits = [s.size for s in self.shapes if length <= s.size * self.tokens_per_rank]
        return min(fits) if fits else None

    def restricted(self, keep) -> "SeqParCostModel":
        """The same model over a subset of shapes (indices or a predicate on GroupShape)."""
        idx = [i for i, s in enumerate(self.shapes) if (keep(s) if callable(keep) else i in keep)]
        if not idx:
            raise ParaplanError("no group shape left after restriction")
        pick = lambda xs: tuple(xs[i] for i in idx)  # noqa: E731
        return SeqParCostModel(self.world_size, self.gpus_per_node, pick(self.shapes), self.tokens_per_rank,
                               self.linear_s_per_token, pick(self.a2a_s_per_token), pick(self.fixed_s),
                               pick(self.ring_s_per_token), self.microbatch_floor_s, self.step_fixed_s,
                               self._attn_table, self.description)


# ---- construction from paraplan's models ---------------------------------------------------------------------------
def _comm_group(size: int, gpus_per_node: int) -> comm.Group:
    """A group of `size` contiguous ranks placed on node boundaries (see placement.py)."""
    if size <= 1:
        return comm.Group(1, 1, 1)
    per_node = min(size, gpus_per_node)
    return comm.Group(size, per_node, math.ceil(size / per_node))


def _affine(f, x0: float = 1e6, x1: float = 2e6) -> tuple[float, float]:
    """(intercept, slope) of a function that is affine in its argument (checked at a third point)."""
    y0, y1 = f(x0), f(x1)
    slope = (y1 - y0) / (x1 - x0)
    intercept = y0 - slope * x0
    x2 = 7.3e6
    if abs(f(x2) - (intercept + slope * x2)) > 1e-9 + 1e-6 * abs(f(x2)):
        raise AssertionError("cost is not affine in its size")   # the decomposition below relies on it
    return intercept, slope


def build_cost_model(model: ModelSpec, cluster: ClusterSpec, *, framework: str = "deepspeed",
                     recompute: str = "none", max_tokens_per_rank: int | None = None,
                     memory_limit_gib: float | None = None, sizes: str = "pow2", ring: bool = False,
                     precision: str = "bf16", shapes: tuple[GroupShape, ...] | None = None) -> SeqParCostModel:
    """Cost model of `model` on `cluster` (homogeneous), ZeRO-3 over all GPUs, flash attention.
    Group shapes: FlexSP's pure-Ulysses powers of two (sizes="pow2", ring=False), node divisors and whole nodes
    (sizes="any"), Ulysses x ring shapes (ring=True), or exactly `shapes`.
    `max_tokens_per_rank` overrides the memory model's limit; `memory_limit_gib` caps usable HBM per GPU."""
    return _build(model, cluster, framework, recompute, max_tokens_per_rank, memory_limit_gib, sizes, ring, precision,
                  None if shapes is None else tuple(shapes))


@functools.lru_cache(maxsize=256)
def _build(model, cluster, framework, recompute, max_tokens_per_rank, memory_limit_gib, sizes, ring,
           precision, given_shapes) -> SeqParCostModel:
    if recompute not in RECOMPUTE_MODES:
        raise ParaplanError(f"recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {recompute!r}")
    g = cluster.primary
    gpu, n, gpn = g.gpu, cluster.num_gpus, min(g.gpus_per_node, cluster.num_gpus)
    cal = calibration_for(gpu.name, framework)
    intra, inter = g.intra_node, g.inter_node
    strategy = Strategy(dp=n, zero=3, recompute=recompute)
    passes = 3 if recompute == "full" else 2          # forward, backward (and the recomputed forward)

    # memory: bytes per GPU are affine in the tokens it holds
    def mem_bytes(tokens: float) -> float:
        job = JobSpec(global_batch=n, seq_len=int(tokens), precision=precision, framework=framework)
        return memory.memory_per_gpu(model, job, strategy, gpu, inflight_microbatches=[1]).total_gib * 2**30
    base_b, per_token_b = _affine(mem_bytes, 4096, 8192)
    limit_gib = gpu.hbm_gib if memory_limit_gib is None else min(memory_limit_gib, gpu.hbm_gib)
    tokens_per_rank = int((limit_gib * 2**30 - base_b) // per_token_b)
    if max_tokens_per_rank is not None:
        if max_tokens_per_rank <= 0:
            raise ParaplanError(f"max_tokens_per_rank must be a positive integer, got {max_tokens_per_rank}")
        tokens_per_rank = int(max_tokens_per_rank)
    if tokens_per_rank <= 0:
        raise ParaplanError(f"{model.name} does not fit on {gpu.name} with ZeRO-3 over {n} GPUs and recompute="
                            f"{recompute}: model states and buffers take {base_b / 2**30:.1f} GiB of "
                            f"{limit_gib:.1f} GiB")

    # linear compute per token: one layer's non-attention operators at the tokens a full GPU holds
    ref_tokens = max(256, min(tokens_per_rank, 65536))
    job = JobSpec(global_batch=n, seq_len=ref_tokens, precision=precision, framework=framework)
    one = Strategy(recompute=recompute)
    layer_s = 0.0
    for moe_layer, count in ((False, model.layers - model.num_moe_layers), (True, model.num_moe_layers)):
        if not count:
            continue
        ops = [op for op in compute.layer_ops(model, job, one, moe_layer, flash_attention=True)
               if op.kind != "attn"]
        t = sum(compute.op_time(op, gpu, cal, precision, False) + compute.op_time(op, gpu, cal, precision, True)
                for op in ops)
        if recompute == "full":
            t += sum(compute.op_time(op, gpu, cal, precision, False) for op in ops)
        layer_s += count * t
    emb_f, emb_b = compute.embedding_time(model, job, one, gpu, cal)
    head_f, head_b = compute.head_time(model, job, one, gpu, cal)
    linear_s_per_token = (layer_s + emb_f + emb_b + head_f + head_b) / ref_tokens

    # attention of a whole sequence on one GPU (all heads), tabulated over lengths
    head_dim = model.head_dim if not model.mla else model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
    v_dim = model.head_dim if not model.mla else model.mla.v_head_dim
    recompute_attn = recompute in ("full", "selective")

    def attention_one_gpu(s: float) -> float:
        flops = 2 * model.heads * s * s * (head_dim + v_dim) * 0.5     # causal: half the score matrix
        t = (compute.flash_attention_time(flops, int(s), gpu, cal, False, head_dim)
             + compute.flash_attention_time(flops, int(s), gpu, cal, True, head_dim))
        if recompute_attn:
            t += compute.flash_attention_time(flops, int(s), gpu, cal, False, head_dim)
        return model.layers * t
    grid = np.unique(np.round(np.geomspace(1, 4 * 2**20, 160)))
    attn_table = (tuple(np.log(grid)), tuple(attention_one_gpu(s) / (s * s) for s in grid))

    # communication per shape
    if given_shapes is None:
        shapes = group_shapes(model, group_sizes(n, gpn, sizes), gpn, ring)
    else:
        shapes = list(given_shapes)
        for shape in shapes:
            if (shape.size != shape.ulysses * shape.ring * shape.tensor or shape.size > n
                    or not ulysses_degree_ok(model, shape.ulysses * shape.tensor)):
                raise ParaplanError(f"group shape {shape.label} is not valid for {model.name} on {n} GPUs "
                                    f"(size = ulysses x ring <= GPUs; ulysses must divide heads {model.heads} and "
                                    f"kv_heads {model.kv_heads})")
    q_w, kv_w = model.q_dim, model.kv_dim
    a2a_per_token, fixed, ring_per_token = [], [], []
    for shape in shapes:
        layers = model.layers
        a2a_slope = a2a_fixed = ring_slope = ring_fixed = 0.0
        if shape.ulysses > 1:
            group = _comm_group(shape.ulysses, gpn)
            # per tensor: what one rank sends = its tokens (s / d) x width x 2 bytes
            c0, c1 = _affine(lambda b: comm.collective_time("all_to_all", b, group, intra, inter, cal))
            kv_width = max(kv_w, shape.ulysses * model.head_dim)     # K/V replicated to u heads beyond kv_heads
            widths = (q_w, kv_width, kv_width, q_w)
            a2a_slope = passes * layers * sum(c1 * w * 2 / shape.size for w in widths)
            a2a_fixed = passes * layers * len(widths) * c0
        if shape.tensor > 1:
            # Megatron SP: all-gather before and reduce-scatter after the attention and the MLP blocks, of the
            # CP rank's s / ring tokens x hidden (estimate.py _layer_comm); the recomputed forward repeats them
            group = _comm_group(shape.tensor, gpn)
            g0, g1 = _affine(lambda b: comm.collective_time("all_gather", b, group, intra, inter, cal))
            r0, r1 = _affine(lambda b: comm.collective_time("reduce_scatter", b, group, intra, inter, cal))
            a2a_slope += passes * layers * 2 * (g1 + r1) * model.hidden * 2 / shape.ring
            a2a_fixed += passes * layers * 2 * (g0 + r0)
        if shape.ring > 1:
            crosses = shape.size > gpn
            p0, p1 = _affine(lambda b: comm.p2p_time(b, crosses, intra, inter, cal))
            heads_split = min(shape.ulysses * shape.tensor, model.kv_heads)   # replicated K/V heads go round too
            kv_bytes_per_token = 2 * (kv_w / heads_split) * 2 / shape.ring     # K and V of s/r tokens, bf16
            # forward passes K/V (r - 1) times, backward passes K/V and dK/dV: 3x the forward's bytes in all
            steps = (shape.ring - 1) * (passes - 1 + 2)
            ring_slope = layers * steps * p1 * kv_bytes_per_token
            ring_fixed = layers * steps * p0
        a2a_per_token.append(a2a_slope)
        ring_per_token.append(ring_slope)
        fixed.append(a2a_fixed + ring_fixed)

    # ZeRO-3 traffic and host launches bound a micro-batch from below
    world = _comm_group(n, gpn)
    grad_bytes = grad_reduce_bytes_per_param(framework)
    zero_s = 0.0
    for i in range(model.layers):
        p = sum(memory.layer_params_on_gpu(model, strategy, i))
        # gathered for forward and again for backward (the recomputed forward reuses the backward's gather)
        zero_s += 2 * comm.collective_time("all_gather", p * 2, world, intra, inter, cal)
        zero_s += comm.collective_time("reduce_scatter", p * grad_bytes, world, intra, inter, cal)
    host_s = model.layers * cal.layer_host_s * (1 + cal.backward_host_ratio + (1 if recompute == "full" else 0))
    floor = max(zero_s, host_s) + cal.microbatch_overhead_s
    step_fixed = compute.optimizer_time(model.total_params() / n, gpu, cal) + cal.iteration_overhead_s

    description = {"gpu": gpu.name, "gpus": n, "gpus_per_node": gpn, "framework": framework,
                   "recompute": recompute, "tokens_per_rank": tokens_per_rank,
                   "memory_per_token_mib": per_token_b / 2**20, "memory_base_gib": base_b / 2**30,
                   "memory_limit_gib": limit_gib, "zero3_traffic_per_microbatch_s": zero_s,
                   "linear_ms_per_1k_tokens": 1e3 * linear_s_per_token * 1000,
                   "shapes": [s.label for s in shapes]}
    return SeqParCostModel(n, gpn, tuple(shapes), tokens_per_rank, linear_s_per_token, tuple(a2a_per_token),
                           tuple(fixed), tuple(ring_per_token), floor, step_fixed, attn_table, description)
