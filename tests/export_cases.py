"""One sensible strategy per preset model on its default cluster (DGX H100 nodes), used to check that the exports
pass the engines' own validation. Each engine gets the strategy adapted to what it can run."""
from __future__ import annotations

from paraplan.specs import JobSpec, Strategy
from paraplan.specs.loaders import list_models, load_cluster, load_model

DEFAULT_CLUSTER = "dgx-h100"
# model -> (Megatron-LM strategy, global batch, sequence length)
MEGATRON = {
    "debug": ("tp=2,pp=2,dp=2,mbs=1,zero=1,sp=true", 16, 512),
    "gpt-1.7b": ("tp=1,pp=1,dp=8,mbs=2,zero=1", 64, 2048),
    "gpt-3.6b": ("tp=2,pp=1,dp=4,mbs=1,zero=1,sp=true", 64, 2048),
    "gpt-7.5b": ("tp=4,pp=1,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 2048),
    "gpt-18.4b": ("tp=8,pp=1,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 2048),
    "gpt-39.1b": ("tp=8,pp=2,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 2048),
    "gpt-76.1b": ("tp=8,pp=4,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 2048),
    "gpt-145.6b": ("tp=8,pp=8,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 128, 2048),
    "gpt-310.1b": ("tp=8,pp=16,dp=1,mbs=1,zero=1,sp=true,recompute=full", 128, 2048),
    "gpt-529.6b": ("tp=8,pp=15,dp=2,mbs=1,zero=1,sp=true,recompute=full", 240, 2048),
    "gpt-1t": ("tp=8,pp=16,dp=2,mbs=1,zero=1,sp=true,recompute=full", 256, 2048),
    "gpt-22b": ("tp=8,pp=1,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 2048),
    "gpt3-175b": ("tp=8,pp=8,dp=2,vpp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 2048),
    "llama2-7b": ("tp=2,pp=1,dp=4,mbs=1,zero=1,sp=true", 64, 4096),
    "llama2-13b": ("tp=4,pp=1,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 4096),
    "llama2-70b": ("tp=8,pp=2,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 4096),
    "llama3-8b": ("tp=2,pp=1,dp=4,mbs=1,zero=1,sp=true,recompute=selective", 128, 8192),
    "llama3-70b": ("tp=8,pp=2,dp=4,vpp=5,mbs=1,zero=1,sp=true,recompute=selective", 256, 8192),
    "llama3-405b": ("tp=8,pp=8,dp=2,mbs=1,zero=1,sp=true,recompute=full", 128, 8192),
    "qwen2-7b": ("tp=4,pp=1,dp=2,mbs=1,zero=1,sp=true", 64, 4096),
    "qwen2-72b": ("tp=8,pp=2,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 4096),
    "mixtral-8x7b": ("tp=2,pp=1,dp=4,ep=4,mbs=1,zero=1,sp=true,recompute=selective", 64, 4096),
    "mixtral-8x22b": ("tp=8,pp=4,dp=2,ep=8,mbs=1,zero=1,sp=true,recompute=selective", 64, 4096),
    "grok1-314b": ("tp=8,pp=8,dp=2,ep=8,mbs=1,zero=1,sp=true,recompute=full", 64, 8192),
    "qwen3-30b-a3b": ("tp=1,pp=2,dp=8,ep=8,mbs=1,zero=1,recompute=selective", 64, 4096),
    "qwen3-235b-a22b": ("tp=2,pp=8,dp=4,ep=8,mbs=1,zero=1,sp=true,recompute=full", 128, 4096),
    "gpt-oss-120b": ("tp=1,pp=4,dp=16,ep=8,mbs=1,zero=1,recompute=selective", 128, 4096),
    "deepseek-v3": ("tp=1,pp=8,dp=32,ep=32,mbs=1,zero=1,recompute=full", 512, 4096),
    "nemotron4-15b": ("tp=4,pp=1,dp=2,mbs=1,zero=1,sp=true,recompute=selective", 64, 4096),
    "nemotron4-340b": ("tp=8,pp=12,dp=2,mbs=1,zero=1,sp=true,recompute=full", 96, 4096),
}


def megatron_case(name: str):
    text, gb, seq = MEGATRON[name]
    s = Strategy.parse(text)
    return s, load_model(name), load_cluster(DEFAULT_CLUSTER, s.world_size), JobSpec(global_batch=gb, seq_len=seq)


def deepspeed_strategy(s: Strategy) -> Strategy:
    """What DeepSpeed runs of a Megatron plan: one stage per rank, no SP/CP, whole-layer recompute, ZeRO <= 1 with PP."""
    return s.with_(vpp=1, schedule="1f1b", sequence_parallel=False, tp_comm_overlap=False,
                   recompute="full" if s.recompute == "selective" else s.recompute,
                   zero=min(s.zero, 1) if s.pp > 1 else s.zero)


def torchtitan_strategy(s: Strategy) -> Strategy:
    """torchtitan's FSDP2 (ZeRO-3) version of a plan."""
    return s.with_(zero=3)


def check_table_covers_presets() -> list[str]:
    return sorted(set(list_models()) - set(MEGATRON))
