"""Run FlexSP step plans in a PyTorch training loop: per-step sequence-parallel groups over a fixed world.

Every step, `SeqParRuntime.plan(lengths)` gives each rank the same `StepPlan` (planned on rank 0 and broadcast, or
planned on every rank and checked to agree), checks it, and returns this rank's view of it: for each micro-batch the
group it is in, its shard position, the sequences the group processes and the group's process group. Process groups
are created once per distinct set of ranks and cached (FlexSP's "hot switching" communicator pool, paper §5).

Failure contract: any problem one rank sees (a bad plan, a planner exception, data that does not match the plan)
is exchanged in the same collective that would come next anyway, and every rank raises the same one-line
`ParaplanError`; no rank is left waiting in a collective the others skipped.

Typical loop (see README "Sequence-parallel runtime" and examples/flexsp_train.py):

    runtime = SeqParRuntime(planner, heads=cfg.heads, kv_heads=cfg.kv_heads, max_tokens_per_rank=4096)
    for batch in batches:                                  # the same list of token tensors on every rank
        step = runtime.plan([len(t) for t in batch])
        packed = runtime.pack(step, batch)                 # this rank's shards + the step's label-token count
        for shard in packed.shards:
            logits = model(shard.input_ids, shard.position_ids, shard.attention)
            (token_loss_sum(logits, shard.labels) / packed.global_label_tokens).backward()
        runtime.allreduce_gradients(model)
        optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from paraplan.errors import ParaplanError
from paraplan.seqpar.attention import ulysses_heads_problem
from paraplan.seqpar.data import PackedShard, pack_shard
from paraplan.seqpar.types import StepPlan

Planner = Callable[[tuple[int, ...]], StepPlan]


# ---- checks that need no communication ------------------------------------------------------------------------------
def check_plan(plan: StepPlan, *, world_size: int, lengths: Sequence[int] | None = None, heads: int | None = None,
               kv_heads: int | None = None, max_tokens_per_rank: int | None = None) -> None:
    """ParaplanError (one line) unless this runtime can execute `plan` on `world_size` ranks: groups cover the world,
    every sequence is planned once and fits its group, and the model's heads shard over every group size."""
    if not isinstance(plan, StepPlan):
        raise ParaplanError(f"the planner must return a StepPlan, got {type(plan).__name__}")
    if plan.world_size != world_size:
        raise ParaplanError(f"the plan is for {plan.world_size} ranks but the world has {world_size}")
    if lengths is not None and tuple(lengths) != plan.lengths:
        raise ParaplanError(f"the plan's {len(plan.lengths)} sequence lengths differ from the step's "
                            f"{len(lengths)} lengths")
    plan.validate()
    for mb_index, mb in enumerate(plan.microbatches):
        for g in mb.groups:
            if max_tokens_per_rank is not None:
                for k in g.sequences:
                    if plan.lengths[k] > max_tokens_per_rank * len(g.ranks):
                        raise ParaplanError(
                            f"micro-batch {mb_index}: sequence {k} ({plan.lengths[k]} tokens) is longer than its group "
                            f"of {len(g.ranks)} ranks can hold ({len(g.ranks)} x max_tokens_per_rank "
                            f"{max_tokens_per_rank} = {len(g.ranks) * max_tokens_per_rank} tokens)")
            if heads is not None:
                problem = ulysses_heads_problem(heads, kv_heads or heads, len(g.ranks))
                if problem:
                    raise ParaplanError(f"micro-batch {mb_index}: {problem}")
    if max_tokens_per_rank is not None:
        plan.validate(max_tokens_per_rank)


def plan_digest(plan: StepPlan) -> int:
    """A 60-bit fingerprint of a plan (fits an int64 tensor), to check that ranks planning independently agree."""
    return int(hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()[:15], 16)


def describe_plan(plan: StepPlan) -> str:
    """One line per step: for each micro-batch its groups as `size x(sequences, tokens)`, e.g.
    `mb0: 4r(3 seq 2900 tok) | mb1: 2r(2 seq 700 tok) 1r(5 seq 310 tok) 1r(4 seq 290 tok)`."""
    parts = []
    for i, mb in enumerate(plan.microbatches):
        groups = " ".join(f"{len(g.ranks)}r({len(g.sequences)} seq {sum(plan.lengths[k] for k in g.sequences)} tok)"
                          for g in sorted(mb.groups, key=lambda g: (-len(g.ranks), g.ranks)))
        parts.append(f"mb{i}: {groups}")
    return " | ".join(parts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, ParaplanError) else f"{type(exc).__name__}: {text}"


# ---- this rank's view of a step -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankMicroBatch:
    index: int
    group_ranks: tuple[int, ...]      # in plan order: position in the tuple = shard of the group stream
    position: int                     # this rank's shard position in its group
    sequences: tuple[int, ...]        # the step's sequence indices the group processes, in stream order
    process_group: object             # cached torch ProcessGroup; None for a group of one

    @property
    def group_size(self) -> int:
        return len(self.group_ranks)


@dataclass(frozen=True)
class RankStep:
    plan: StepPlan
    rank: int
    microbatches: tuple[RankMicroBatch, ...]
    planning_s: float                 # wall time the planner took (on rank 0, or on this rank when every rank plans)

    @property
    def sequences_held(self) -> tuple[int, ...]:
        """Every sequence this rank needs a shard of this step, in micro-batch order."""
        return tuple(k for mb in self.microbatches for k in mb.sequences)


@dataclass(frozen=True)
class PackedStep:
    shards: tuple[PackedShard, ...]   # one per micro-batch, in order; a shard may be empty (a group given nothing)
    global_label_tokens: int          # label tokens of the whole step over all ranks: the loss denominator


class ProcessGroupCache:
    """One process group per distinct set of ranks, created on first use and kept. `dist.new_group` is collective
    over the world, so `ensure` must be called with the same groups on every rank; the plan is the same everywhere,
    and the groups are created in sorted order."""

    def __init__(self, backend: str | None = None):
        self.backend = backend
        self._groups: dict[tuple[int, ...], object] = {}
        self.created = 0

    def ensure(self, rank_sets: Iterable[Sequence[int]]) -> None:
        for ranks in sorted({tuple(sorted(r)) for r in rank_sets if len(r) > 1} - self._groups.keys()):
            self._groups[ranks] = dist.new_group(list(ranks), backend=self.backend)
            self.created += 1

    def get(self, ranks: Sequence[int]):
        if len(ranks) == 1:
            return None
        return self._groups[tuple(sorted(ranks))]

    def __len__(self) -> int:
        return len(self._groups)


class SeqParRuntime:
    """Per-step FlexSP plans over the default process group (the world).

    planner: lengths -> StepPlan, e.g. `lambda lengths: paraplan.seqpar.plan_step(lengths, model, cluster)`; may be
        None when every call to `plan` passes a ready plan.
    plan_on: "rank0" (plan on rank 0, broadcast; the planner need not be deterministic and only rank 0 pays for it)
        or "every_rank" (every rank plans, the plans' digests are compared; no broadcast of the plan itself).
    heads, kv_heads: the model's attention heads, to reject group sizes Ulysses cannot shard them over.
    max_tokens_per_rank: reject plans whose groups hold more tokens per rank than this.
    """

    def __init__(self, planner: Planner | None = None, *, heads: int | None = None, kv_heads: int | None = None,
                 max_tokens_per_rank: int | None = None, plan_on: str = "rank0",
                 device: torch.device | str | None = None):
        if plan_on not in ("rank0", "every_rank"):
            raise ParaplanError(f"plan_on must be 'rank0' or 'every_rank', got {plan_on!r}")
        if not dist.is_initialized():
            raise ParaplanError("torch.distributed is not initialised; call dist.init_process_group first "
                                "(torchrun sets the environment for it)")
        self.planner = planner
        self.heads, self.kv_heads = heads, kv_heads
        self.max_tokens_per_rank = max_tokens_per_rank
        self.plan_on = plan_on
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.groups = ProcessGroupCache()
        # Plans and error messages travel as Python objects; with NCCL that would need a device round trip per step,
        # so control messages use a CPU (gloo) group of the whole world.
        self._control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    # -- collectives that carry errors ---------------------------------------------------------------------------
    def _agree(self, error: str | None, value: int = 0, *, op: str = "sum") -> int:
        """Collective: raise the lowest failing rank's error on every rank if any rank has one, else return `value`
        summed over the ranks (op="sum") or, for op="same", the common value (ParaplanError if ranks differ).
        One small all-reduce when all is well; the messages are gathered only after a failure."""
        failed = 1 if error is not None else 0
        if op == "sum":
            flags = torch.tensor([failed, value], dtype=torch.int64)
            dist.all_reduce(flags, group=self._control)
        else:   # max of value and of -value: equal values iff max == -max(-value)
            flags = torch.tensor([failed, value, -value], dtype=torch.int64)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._control)
        if int(flags[0]):
            messages: list = [None] * self.world_size
            dist.all_gather_object(messages, error, group=self._control)
            source, message = next((r, m) for r, m in enumerate(messages) if m is not None)
            raise ParaplanError(message if self.world_size == 1 else f"{message} (seen on rank {source})")
        if op == "same" and int(flags[1]) != -int(flags[2]):
            raise ParaplanError("ranks planned different steps (plan digests differ); the planner is not "
                                "deterministic, plan on rank 0 instead (plan_on='rank0')")
        return int(flags[1])

    def _make_plan(self, lengths: tuple[int, ...], plan: StepPlan | None) -> tuple[StepPlan, float]:
        start = time.perf_counter()
        if plan is None:
            if self.planner is None:
                raise ParaplanError("no plan given and the runtime has no planner")
            plan = self.planner(lengths)
        elapsed = time.perf_counter() - start
        check_plan(plan, world_size=self.world_size, lengths=lengths, heads=self.heads, kv_heads=self.kv_heads,
                   max_tokens_per_rank=self.max_tokens_per_rank)
        return plan, elapsed

    # -- per step ---------------------------------------------------------------------------------------------------
    def plan(self, lengths: Sequence[int], plan: StepPlan | None = None) -> RankStep:
        """Collective: this step's plan, the same on every rank, and this rank's part in it. With plan_on='rank0'
        only rank 0's `lengths` and `plan` are used (the others may pass theirs, and they are checked)."""
        lengths = tuple(int(s) for s in lengths)
        if self.plan_on == "every_rank":
            error, digest, planning_s = None, 0, 0.0
            try:
                plan, planning_s = self._make_plan(lengths, plan)
                digest = plan_digest(plan)
            except Exception as exc:   # noqa: BLE001 - any failure must reach the other ranks, not strand them
                error = _one_line(exc)
            self._agree(error, digest, op="same")
        else:
            message = [None]
            if self.rank == 0:
                try:
                    plan, planning_s = self._make_plan(lengths, plan)
                    message = [{"plan": plan.to_dict(), "planning_s": planning_s}]
                except Exception as exc:   # noqa: BLE001 - any failure must reach the other ranks
                    message = [{"error": _one_line(exc)}]
            dist.broadcast_object_list(message, src=0, group=self._control)
            if "error" in message[0]:
                raise ParaplanError(message[0]["error"] + ("" if self.world_size == 1 else " (seen on rank 0)"))
            plan, planning_s = StepPlan.from_dict(message[0]["plan"]), message[0]["planning_s"]
            mismatch = None if tuple(plan.lengths) == lengths else (
                f"rank {self.rank}'s batch has different sequence lengths than rank 0's ({len(lengths)} vs "
                f"{len(plan.lengths)} sequences, first lengths {list(lengths[:4])} vs {list(plan.lengths[:4])})")
            self._agree(mismatch)
        # The plan is now identical on every rank, so every rank creates the same new groups in the same order.
        self.groups.ensure(g.ranks for mb in plan.microbatches for g in mb.groups)
        mine = []
        for index, mb in enumerate(plan.microbatches):
            group = next(g for g in mb.groups if self.rank in g.ranks)
            mine.append(RankMicroBatch(index, group.ranks, group.ranks.index(self.rank), group.sequences,
                                       self.groups.get(group.ranks)))
        return RankStep(plan, self.rank, tuple(mine), planning_s)

    def pack(self, step: RankStep, tokens: Mapping[int, torch.Tensor] | Sequence[torch.Tensor], *,
             labels: Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | None = None) -> PackedStep:
        """Collective: this rank's shard of every micro-batch (only the sequences in `step.sequences_held` are read)
        and the step's total label-token count, which is the loss denominator on every rank."""
        error, shards, local_labels = None, (), 0
        try:
            shards = tuple(pack_shard(tokens, mb.sequences, mb.group_ranks, self.rank, lengths=step.plan.lengths,
                                      labels=labels, process_group=mb.process_group, device=self.device)
                           for mb in step.microbatches)
            local_labels = sum(s.num_label_tokens for s in shards)
        except Exception as exc:   # noqa: BLE001 - a data error on one rank must not strand the others
            error = _one_line(exc)
        return PackedStep(shards, self._agree(error, local_labels))

    def allreduce_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient over the world (one flat all-reduce). With the loss normalised by
        `PackedStep.global_label_tokens`, the sum is the gradient of the unsharded batch's mean token loss. (Under
        DDP, which averages, multiply the loss by the world size instead.)"""
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
