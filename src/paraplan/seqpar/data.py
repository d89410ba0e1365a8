"""The data side of a FlexSP step: pack one group's sequences into a token stream and cut this rank's shard out of it,
and the loss that makes the gradient independent of how sequences were grouped.

Loss normalisation: every rank sums the token losses of its own shard and divides by the number of label tokens in
the *whole step* (all micro-batches, all groups). Summing the ranks' gradients (`runtime.allreduce_gradients`) then
gives exactly the gradient of the mean token loss of the unsharded batch, whatever the plan. A per-group or
per-micro-batch mean would weight a token by the size of the group it happened to land in.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from paraplan.errors import ParaplanError
from paraplan.seqpar.attention import UlyssesContext

IGNORE_INDEX = -100   # label of tokens that carry no loss: each sequence's last token, padding


@dataclass(frozen=True)
class PackedShard:
    """This rank's slice of one micro-batch: T/d consecutive tokens of its group's packed stream."""
    input_ids: torch.Tensor       # [T/d] int64
    labels: torch.Tensor          # [T/d] int64, IGNORE_INDEX where no loss
    position_ids: torch.Tensor    # [T/d] int64, restarting at 0 at every sequence start
    attention: UlyssesContext
    sequences: tuple[int, ...]    # the step's sequence indices in the group stream, in order

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def next_token_labels(tokens: torch.Tensor) -> torch.Tensor:
    """Causal-LM labels within one sequence: token i predicts token i+1; the last token predicts nothing."""
    labels = torch.full_like(tokens, IGNORE_INDEX)
    labels[:-1] = tokens[1:]
    return labels


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the labelled tokens (computed in float32); divide by the step's label-token count."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def pack_shard(tokens: Mapping[int, torch.Tensor] | Sequence[torch.Tensor], sequences: Sequence[int],
               group_ranks: Sequence[int], rank: int, *, lengths: Sequence[int] | None = None,
               labels: Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | None = None, process_group=None,
               device: torch.device | str | None = None) -> PackedShard:
    """Concatenate `sequences` (indices into `tokens`) into the group's stream, pad it to a multiple of the group size,
    and return the shard at this rank's position in `group_ranks`. Only the group's own sequences are read, so a
    rank needs to load just the sequences it holds. `lengths` (the plan's) are checked against the tokens."""
    d = len(group_ranks)
    if rank not in group_ranks:
        raise ParaplanError(f"rank {rank} is not in the group {tuple(group_ranks)} it was asked to pack for")
    position = list(group_ranks).index(rank)
    ids, labs = [], []
    for k in sequences:
        seq = torch.as_tensor(tokens[k], dtype=torch.long).reshape(-1)
        if lengths is not None and seq.numel() != lengths[k]:
            raise ParaplanError(f"sequence {k} has {seq.numel()} tokens but the plan says {lengths[k]}")
        lab = next_token_labels(seq) if labels is None else torch.as_tensor(labels[k], dtype=torch.long).reshape(-1)
        if lab.numel() != seq.numel():
            raise ParaplanError(f"sequence {k}: {lab.numel()} labels for {seq.numel()} tokens")
        ids.append(seq)
        labs.append(lab)
    seq_lengths = [t.numel() for t in ids]
    total = sum(seq_lengths)
    padded = -(-total // d) * d
    pad = padded - total
    # The padding is a segment of its own, so it never attends to, or is attended by, a real sequence.
    segments = seq_lengths + ([pad] if pad else [])
    cu_seqlens = torch.tensor([0] + segments, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    stream_ids = torch.cat(ids + [torch.zeros(pad, dtype=torch.long)])
    stream_labels = torch.cat(labs + [torch.full((pad,), IGNORE_INDEX, dtype=torch.long)])
    stream_pos = torch.cat([torch.arange(n, dtype=torch.long) for n in segments] or [torch.zeros(0, dtype=torch.long)])
    shard = slice(position * padded // d, (position + 1) * padded // d)
    sorted_ranks = sorted(group_ranks)
    pos_of_group_rank = tuple(list(group_ranks).index(r) for r in sorted_ranks)
    context = UlyssesContext(group_size=d, cu_seqlens=cu_seqlens.to(device), max_seqlen=max(segments, default=0),
                             process_group=process_group,
                             pos_of_group_rank=None if list(group_ranks) == sorted_ranks else pos_of_group_rank)
    return PackedShard(stream_ids[shard].to(device), stream_labels[shard].to(device), stream_pos[shard].to(device),
                       context, tuple(sequences))
