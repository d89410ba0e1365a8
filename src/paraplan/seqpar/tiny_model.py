"""A tiny decoder-only transformer (pre-norm, GQA, learned positions) that runs on packed, sequence-sharded token
streams, for the runtime's tests and examples/flexsp_train.py. Every layer except attention is token-local, so only
attention needs to know about the sequence-parallel group (the Ulysses property)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from paraplan.seqpar.attention import UlyssesContext, ulysses_attention


@dataclass(frozen=True)
class TinyConfig:
    vocab: int = 64
    hidden: int = 32
    heads: int = 4
    kv_heads: int = 2          # fewer than a group of 4 ranks: exercises K/V head replication
    layers: int = 2
    ffn: int = 64
    max_position: int = 512

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def model_spec(self):
        """The same shape as a paraplan ModelSpec, for the planner."""
        from paraplan.specs.model import ModelSpec
        return ModelSpec(name="tiny-flexsp", layers=self.layers, hidden=self.hidden, heads=self.heads, ffn=self.ffn,
                         vocab=self.vocab, kv_heads=self.kv_heads, max_position=self.max_position, norm="rmsnorm",
                         linear_bias=False, source="paraplan.seqpar.tiny_model")


class Attention(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.q = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.kv = nn.Linear(cfg.hidden, 2 * cfg.kv_heads * cfg.head_dim, bias=False)
        self.out = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, ctx: UlyssesContext) -> torch.Tensor:
        c = self.cfg
        q = self.q(x).view(-1, c.heads, c.head_dim)
        k, v = self.kv(x).view(-1, 2, c.kv_heads, c.head_dim).unbind(1)
        return self.out(ulysses_attention(q, k, v, ctx).reshape(-1, c.heads * c.head_dim))


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(cfg.hidden), nn.RMSNorm(cfg.hidden)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.hidden, cfg.ffn, bias=False), nn.GELU(),
                                 nn.Linear(cfg.ffn, cfg.hidden, bias=False))

    def forward(self, x: torch.Tensor, ctx: UlyssesContext) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.mlp(self.mlp_norm(x))


class TinyTransformer(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, ctx: UlyssesContext) -> torch.Tensor:
        """input_ids, position_ids [T/d] (this rank's shard) -> logits [T/d, vocab]."""
        x = self.embed(input_ids) + self.position(position_ids)
        for block in self.blocks:
            x = block(x, ctx)
        return self.head(self.norm(x))
