"""Ulysses attention over one sequence-parallel group of any planned size (DeepSpeed-Ulysses, arXiv 2309.14509).

Each rank of a group of d holds a contiguous shard of the group's packed token stream (all the group's sequences
concatenated, padded to a multiple of d). One all-to-all turns Q/K/V from sequence-sharded [T/d, H, D] into
head-sharded [T, H/d, D]; every rank then runs causal attention over the whole stream for its heads, with sequence
boundaries from `cu_seqlens` (no padding to a common length); a second all-to-all brings the output back to the
sequence-sharded layout. A group of one skips both all-to-alls.

What is communicated (`_AllToAll`, `_seq_to_heads`, `_heads_to_seq`) is kept apart from what is computed
(`varlen_causal_attention`), as picotron does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from paraplan.errors import ParaplanError

try:  # flash-attention varlen kernel, CUDA only; torch >= 2.9
    from torch.nn.attention.varlen import varlen_attn as _flash_varlen_attn
except ImportError:  # pragma: no cover - older torch
    _flash_varlen_attn = None


@dataclass(frozen=True)
class UlyssesContext:
    """Everything attention needs to know about the group that holds this rank's shard.

    `cu_seqlens` are the cumulative sequence starts of the *whole* group stream (the padding is its last segment),
    the same on every rank of the group. `pos_of_group_rank[j]` is the plan position (shard index) of the group's
    j-th smallest global rank: torch numbers a process group's members in sorted order, the plan may not.
    """
    group_size: int
    cu_seqlens: torch.Tensor                # int32 [segments + 1], on the compute device
    max_seqlen: int
    process_group: object = None            # torch ProcessGroup; None when group_size == 1
    pos_of_group_rank: tuple[int, ...] | None = None   # None: plan order is sorted order (the common case)

    @property
    def group_rank_of_pos(self) -> tuple[int, ...] | None:
        if self.pos_of_group_rank is None:
            return None
        inverse = [0] * self.group_size
        for group_rank, pos in enumerate(self.pos_of_group_rank):
            inverse[pos] = group_rank
        return tuple(inverse)


def ulysses_heads_problem(heads: int, kv_heads: int, group_size: int) -> str | None:
    """Why Ulysses cannot shard these heads over a group of `group_size` ranks, or None if it can.

    Query heads must split evenly. K/V heads either split evenly too, or, when the group is larger than the number
    of K/V heads (GQA, MQA), each K/V head is replicated group_size // kv_heads times before the all-to-all, which
    needs group_size to be a multiple of kv_heads."""
    if heads % group_size:
        return (f"{heads} attention heads do not split over a group of {group_size} ranks "
                "(Ulysses needs heads % group == 0)")
    if kv_heads % group_size and group_size % kv_heads:
        return (f"{kv_heads} K/V heads do not split over, nor replicate evenly to, a group of {group_size} ranks "
                "(need kv_heads % group == 0 or group % kv_heads == 0)")
    return None


class _AllToAll(torch.autograd.Function):
    """x[j] goes to group rank j; out[j] came from group rank j. The map is a permutation of the group's data, and its
    adjoint is the same all-to-all, so backward is one more all-to-all."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _all_to_all(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all(grad, ctx.group), None


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    # Both buffers dense and row-major: all_to_all_single splits raw memory along dim 0, and empty_like would copy a
    # non-contiguous input's strides (autograd hands backward such gradients).
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x: torch.Tensor, ctx: UlyssesContext) -> torch.Tensor:
    """[T/d, H, D] sequence shard -> [T, H/d, D], tokens in plan-position order, head slice of this rank's position."""
    d = ctx.group_size
    t_local, heads, dim = x.shape
    chunks = x.reshape(t_local, d, heads // d, dim).transpose(0, 1)        # [position, T/d, H/d, D]
    if ctx.pos_of_group_rank is not None:
        chunks = chunks[list(ctx.pos_of_group_rank)]                        # slot j: heads for group rank j
    received = _AllToAll.apply(chunks.contiguous(), ctx.process_group)      # slot j: tokens of group rank j
    if ctx.pos_of_group_rank is not None:
        received = received[list(ctx.group_rank_of_pos)]                    # slot p: tokens of position p
    return received.reshape(d * t_local, heads // d, dim)


def _heads_to_seq(y: torch.Tensor, ctx: UlyssesContext) -> torch.Tensor:
    """The inverse of `_seq_to_heads`: [T, H/d, D] -> [T/d, H, D]."""
    d = ctx.group_size
    tokens, local_heads, dim = y.shape
    chunks = y.reshape(d, tokens // d, local_heads, dim)                    # [position, T/d, H/d, D]
    if ctx.pos_of_group_rank is not None:
        chunks = chunks[list(ctx.pos_of_group_rank)]
    received = _AllToAll.apply(chunks.contiguous(), ctx.process_group)      # slot j: heads of group rank j
    if ctx.pos_of_group_rank is not None:
        received = received[list(ctx.group_rank_of_pos)]
    return received.transpose(0, 1).reshape(tokens // d, d * local_heads, dim)


def varlen_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_seqlen: int) -> torch.Tensor:
    """Causal attention of each segment of a packed stream with itself. q [T, Hq, D], k/v [T, Hkv, D], Hq a multiple
    of Hkv (query head i uses K/V head i // (Hq/Hkv)). Flash varlen on CUDA in half precision; elsewhere one SDPA
    call per segment, so no token attends across a sequence boundary and nothing is padded."""
    if (_flash_varlen_attn is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        return _flash_varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  window_size=(-1, 0), enable_gqa=k.shape[1] != q.shape[1])
    bounds = cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        seg = [t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v)]   # [1, H, L, D]
        out = F.scaled_dot_product_attention(*seg, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
        outputs.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(outputs, dim=0) if outputs else q.new_zeros(q.shape)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: UlyssesContext) -> torch.Tensor:
    """Attention of this rank's sequence shard. q [T/d, H, D], k/v [T/d, Hkv, D] -> [T/d, H, D]."""
    d = ctx.group_size
    if d == 1:
        return varlen_causal_attention(q, k, v, ctx.cu_seqlens, ctx.max_seqlen)
    heads, kv_heads = q.shape[1], k.shape[1]
    problem = ulysses_heads_problem(heads, kv_heads, d)
    if problem:
        raise ParaplanError(problem)   # the runtime rejects such plans on every rank before any rank gets here
    if kv_heads < d:
        # Each rank must hold the K/V head its query heads use; replicate so every rank gets exactly one.
        k = k.repeat_interleave(d // kv_heads, dim=1)
        v = v.repeat_interleave(d // kv_heads, dim=1)
        kv_heads = d
    # One all-to-all for Q, K and V together: per destination, its query heads then its K then its V heads.
    t_local, dim = q.shape[0], q.shape[2]
    hq, hkv = heads // d, kv_heads // d
    packed = torch.cat([q.reshape(t_local, d, hq, dim), k.reshape(t_local, d, hkv, dim),
                        v.reshape(t_local, d, hkv, dim)], dim=2).reshape(t_local, d * (hq + 2 * hkv), dim)
    full = _seq_to_heads(packed, ctx)
    q_full, k_full, v_full = full.split([hq, hkv, hkv], dim=1)
    out = varlen_causal_attention(q_full, k_full, v_full, ctx.cu_seqlens, ctx.max_seqlen)
    return _heads_to_seq(out, ctx)
