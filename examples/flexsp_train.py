"""Train a tiny transformer with FlexSP: a new sequence-parallel plan every step, on CPU (gloo) or GPUs (NCCL).

    torchrun --standalone --nproc-per-node 4 examples/flexsp_train.py --steps 10            # CPU, 4 processes
    torchrun --standalone --nproc-per-node 8 examples/flexsp_train.py --max-len 32768 \
        --max-tokens-per-rank 16384 --hidden 1024 --heads 16 --kv-heads 8 --layers 8          # one 8-GPU node

Every step draws a batch of long-tailed sequence lengths (the same on every rank), plans it with
`paraplan.seqpar.plan_step` on rank 0 (the runtime broadcasts the plan), packs each rank's shards, runs forward and
backward micro-batch by micro-batch, sums gradients over the world and steps the optimizer. Rank 0 prints the step
time, the planner's time and the plan. The data is a learnable toy task (arithmetic progressions mod the vocabulary),
so the loss falls.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from paraplan.errors import ParaplanError
from paraplan.seqpar.data import token_loss_sum
from paraplan.seqpar.runtime import SeqParRuntime, describe_plan
from paraplan.seqpar.tiny_model import TinyConfig, TinyTransformer
from paraplan.specs.loaders import load_cluster


@dataclass
class TrainArgs:
    steps: int = 10                   # training steps; each gets a new batch and a new plan
    sequences: int = 16               # sequences per global batch
    min_len: int = 16                 # shortest sequence (tokens)
    max_len: int = 2048               # longest sequence (tokens); lengths are log-normal, clipped to [min, max]
    median_len: int = 160             # median of the log-normal length distribution
    max_tokens_per_rank: int = 1024   # tokens one rank may hold per micro-batch (the planner's memory limit)
    cluster: str = "dgx-a100"         # cluster preset the planner's cost model assumes, sized to the world
    solver: str = "fast"              # planner: fast or milp
    plan_on: str = "rank0"            # rank0 (plan once, broadcast) or every_rank (plan everywhere, compare)
    precision: str = "auto"           # bf16 (autocast; flash varlen attention on CUDA), fp32, or auto: bf16 on CUDA
    hidden: int = 64
    heads: int = 8
    kv_heads: int = 4
    layers: int = 2
    vocab: int = 128
    lr: float = 3e-3
    seed: int = 0


def parse_args() -> TrainArgs:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(TrainArgs):   # flags come from the dataclass fields: one source of truth per knob
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    return TrainArgs(**vars(parser.parse_args()))


def batch_lengths(args: TrainArgs, step: int) -> list[int]:
    rng = random.Random(args.seed * 1_000_003 + step)   # the same batch on every rank, without communication
    mu = float(torch.tensor(args.median_len).log())
    return [min(args.max_len, max(args.min_len, int(rng.lognormvariate(mu, 1.1)))) for _ in range(args.sequences)]


def make_sequence(args: TrainArgs, step: int, index: int, length: int) -> torch.Tensor:
    """An arithmetic progression mod vocab with a random start and stride: predictable after two tokens."""
    rng = random.Random((args.seed * 1_000_003 + step) * 10_007 + index)
    start, stride = rng.randrange(args.vocab), rng.randrange(1, 8)
    return (start + stride * torch.arange(length)) % args.vocab


def find_planner():
    """paraplan.seqpar.plan_step, or a one-line ParaplanError saying it is missing."""
    try:
        from paraplan.seqpar import plan_step
    except ImportError:
        raise ParaplanError("paraplan.seqpar.plan_step (the FlexSP planner) is not available in this paraplan; "
                            "install a paraplan that has it") from None
    return plan_step


def train(args: TrainArgs, device: torch.device, log=print) -> list[dict]:
    """The training loop; torch.distributed must be initialised. Returns one record per step (rank 0 logs them)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    plan_step = find_planner()
    cfg = TinyConfig(vocab=args.vocab, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                     layers=args.layers, ffn=4 * args.hidden, max_position=args.max_len)
    model_spec, cluster = cfg.model_spec(), load_cluster(args.cluster, world)

    def planner(lengths):
        return plan_step(lengths, model_spec, cluster, max_tokens_per_rank=args.max_tokens_per_rank,
                         solver=args.solver)

    runtime = SeqParRuntime(planner, heads=cfg.heads, kv_heads=cfg.kv_heads,
                            max_tokens_per_rank=args.max_tokens_per_rank, plan_on=args.plan_on, device=device)
    torch.manual_seed(args.seed)   # the same initial weights on every rank
    model = TinyTransformer(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    if rank == 0:
        log(f"world {world} ({dist.get_backend()}), model {sum(p.numel() for p in model.parameters())} parameters, "
            f"{args.sequences} sequences of {args.min_len}-{args.max_len} tokens per step, "
            f"max {args.max_tokens_per_rank} tokens per rank")

    if args.precision not in ("auto", "bf16", "fp32"):
        raise ParaplanError(f"--precision must be auto, bf16 or fp32, got {args.precision!r}")
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    records = []
    for step_index in range(args.steps):
        lengths = batch_lengths(args, step_index)
        start = time.perf_counter()
        step = runtime.plan(lengths)
        plan_s = time.perf_counter() - start
        tokens = {k: make_sequence(args, step_index, k, lengths[k]) for k in step.sequences_held}
        packed = runtime.pack(step, tokens)
        loss = torch.zeros((), device=device)
        for shard in packed.shards:
            if shard.num_tokens == 0:   # this rank's group got no sequence in this micro-batch
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(shard.input_ids, shard.position_ids, shard.attention)
            part = token_loss_sum(logits, shard.labels) / packed.global_label_tokens
            part.backward()
            loss += part.detach()
        runtime.allreduce_gradients(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s = time.perf_counter() - start
        record = {"step": step_index, "step_s": step_s, "planner_s": step.planning_s, "plan_and_sync_s": plan_s,
                  "loss": loss.item(), "tokens": sum(lengths), "predicted_s": step.plan.predicted_s,
                  "plan": describe_plan(step.plan)}
        records.append(record)
        if rank == 0:
            predicted = (f", predicted on {args.cluster} {step.plan.predicted_s * 1e3:.2f} ms"
                         if step.plan.predicted_s else "")
            log(f"step {step_index:3d}  {step_s * 1e3:8.1f} ms  planner {step.planning_s * 1e3:6.1f} ms "
                f"(+sync {1e3 * (plan_s - step.planning_s):5.1f} ms)  loss {record['loss']:.4f}  "
                f"{record['tokens']} tokens{predicted}\n          plan {record['plan']}")
    if rank == 0 and len(records) > 1:
        # Step 0 also creates process groups and warms up kernels; the overhead is measured on the later steps.
        later = records[1:]
        mean_step = sum(r["step_s"] for r in later) / len(later)
        mean_planner = sum(r["planner_s"] for r in later) / len(later)
        mean_plan = sum(r["plan_and_sync_s"] for r in later) / len(later)
        log(f"steps 1-{len(records) - 1}: mean step {mean_step * 1e3:.1f} ms, planner {mean_planner * 1e3:.1f} ms "
            f"({100 * mean_planner / mean_step:.1f}% of the step), planner + plan exchange {mean_plan * 1e3:.1f} ms "
            f"({100 * mean_plan / mean_step:.1f}%)")
    return records


def main() -> int:
    args = parse_args()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda") if use_cuda else torch.device("cpu")
    try:
        train(args, device, log=lambda line: print(line, flush=True))
        status = 0
    except ParaplanError as exc:   # raised on every rank with the same one-line message
        if dist.get_rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        status = 2
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
