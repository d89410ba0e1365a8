"""The data a FlexSP step plan is made of, shared by the planner (`paraplan seqpar`) and the PyTorch runtime.

A step plan says, for one global batch (a list of sequence lengths) and a world of N ranks, how the batch is cut into
micro-batches and, in each micro-batch, which sequence-parallel groups exist (disjoint rank ranges covering the world)
and which sequences each group processes. Plain data with a JSON form, so rank 0 can plan and broadcast it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from paraplan.errors import ParaplanError


@dataclass(frozen=True)
class GroupAssignment:
    ranks: tuple[int, ...]        # global ranks of this SP group, in order (position in the group = sequence shard)
    sequences: tuple[int, ...]    # indices into StepPlan.lengths processed by this group in this micro-batch


@dataclass(frozen=True)
class MicroBatchPlan:
    groups: tuple[GroupAssignment, ...]   # disjoint and together covering ranks 0..world_size-1
    predicted_s: float | None = None      # the planner's predicted time of this micro-batch (max over groups)


@dataclass(frozen=True)
class StepPlan:
    lengths: tuple[int, ...]              # the step's sequence lengths in tokens, as given
    world_size: int
    microbatches: tuple[MicroBatchPlan, ...]
    predicted_s: float | None = None      # predicted step time (sum over micro-batches), when a planner made it
    notes: tuple[str, ...] = field(default=())

    def validate(self, max_tokens_per_rank: int | None = None) -> None:
        """ParaplanError (one line) unless every micro-batch's groups are disjoint and cover the world, and every
        sequence is processed exactly once in the step; with `max_tokens_per_rank`, also that no group holds more
        tokens per rank than that."""
        seen: dict[int, int] = {}
        for mb_index, mb in enumerate(self.microbatches):
            ranks = sorted(r for g in mb.groups for r in g.ranks)
            if ranks != list(range(self.world_size)):
                raise ParaplanError(f"micro-batch {mb_index}: groups must cover ranks 0..{self.world_size - 1} "
                                    f"exactly once, got {ranks}")
            for g in mb.groups:
                if not g.ranks:
                    raise ParaplanError(f"micro-batch {mb_index}: a group has no ranks")
                for k in g.sequences:
                    if not 0 <= k < len(self.lengths):
                        raise ParaplanError(f"micro-batch {mb_index}: sequence index {k} is out of range "
                                            f"0..{len(self.lengths) - 1}")
                    seen[k] = seen.get(k, 0) + 1
                if max_tokens_per_rank is not None:
                    tokens = sum(self.lengths[k] for k in g.sequences)
                    if tokens > max_tokens_per_rank * len(g.ranks):
                        raise ParaplanError(
                            f"micro-batch {mb_index}: group of {len(g.ranks)} ranks holds {tokens} tokens, more than "
                            f"{max_tokens_per_rank} per rank allows")
        missing = [k for k in range(len(self.lengths)) if seen.get(k, 0) != 1]
        if missing:
            raise ParaplanError(f"sequences must each be planned exactly once; wrong count for indices {missing[:10]}")

    def to_dict(self) -> dict:
        return {"lengths": list(self.lengths), "world_size": self.world_size, "predicted_s": self.predicted_s,
                "notes": list(self.notes),
                "microbatches": [{"predicted_s": mb.predicted_s,
                                  "groups": [{"ranks": list(g.ranks), "sequences": list(g.sequences)}
                                             for g in mb.groups]} for mb in self.microbatches]}

    @classmethod
    def from_dict(cls, d: dict) -> "StepPlan":
        try:
            mbs = tuple(MicroBatchPlan(tuple(GroupAssignment(tuple(int(r) for r in g["ranks"]),
                                                             tuple(int(k) for k in g["sequences"]))
                                             for g in mb["groups"]), mb.get("predicted_s"))
                        for mb in d["microbatches"])
            return cls(tuple(int(x) for x in d["lengths"]), int(d["world_size"]), mbs, d.get("predicted_s"),
                       tuple(d.get("notes", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ParaplanError(f"not a step plan ({type(exc).__name__}: {exc}); expected keys lengths, world_size, "
                                "microbatches[].groups[].ranks/sequences") from None
