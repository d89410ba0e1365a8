"""What every exporter shares: the result type, the refusal error and the plan facts the engines need.

An exporter is a pure function (strategy, model, cluster, job) -> Export: the files to write and the exact launch
command. Each engine's rules are named predicates `(s, model, cluster, job) -> None | reason`; the first broken rule
refuses the export in one line that names it ("deepspeed refuses tp=...: rule pp_needs_zero_at_most_1: ...")."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from paraplan.errors import ParaplanError
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Strategy
from paraplan.specs.strategy import default_layer_split

Rule = Callable[[Strategy, ModelSpec, ClusterSpec, JobSpec], "str | None"]


class ExportRefused(ParaplanError):
    """The target engine cannot run this plan; the message names the rule."""


@dataclass
class Export:
    engine: str                          # "megatron", "torchtitan", "deepspeed"
    files: dict[str, str]                # file name -> text, to write side by side in one folder
    launch: str                          # the exact command, run from that folder on every node
    notes: list[str] = field(default_factory=list)   # what the user must still provide (data, hostfile)
    engine_version: str = ""             # the release whose configuration code the files are written for

    def to_dict(self) -> dict:
        return {"engine": self.engine, "engine_version": self.engine_version, "files": dict(self.files),
                "launch": self.launch, "notes": list(self.notes)}


def refuse_if_broken(engine: str, rules: tuple[Rule, ...], s: Strategy, model: ModelSpec, cluster: ClusterSpec,
                     job: JobSpec) -> None:
    """Raise ExportRefused naming the first of `rules` the plan breaks."""
    for rule in rules:
        reason = rule(s, model, cluster, job)
        if reason:
            raise ExportRefused(f"{engine} cannot run {s.describe()}: rule {rule.__name__.removeprefix('rule_')}: "
                                f"{reason}")


def broken_rules(rules: tuple[Rule, ...], s, model, cluster, job) -> list[str]:
    """Names of every rule the plan breaks (for tests and reports)."""
    return [r.__name__.removeprefix("rule_") for r in rules if r(s, model, cluster, job)]


def virtual_stage_layers(model: ModelSpec, s: Strategy) -> tuple[int, ...]:
    """Decoder layers of each virtual pipeline stage in model order (pp*vpp entries), as the estimate simulated."""
    if s.layers_per_stage is not None:
        return tuple(s.layers_per_stage)
    return default_layer_split(model.layers, s.pp * s.vpp)


def nodes_and_gpus(cluster: ClusterSpec, s: Strategy) -> tuple[int, int]:
    """(nodes, GPUs per node) that the launch uses: the strategy's world on whole nodes where it fills them."""
    per_node = min(cluster.gpus_per_node, s.world_size)
    return max(1, -(-s.world_size // per_node)), per_node


def microbatches(s: Strategy, job: JobSpec) -> int:
    return s.num_microbatches(job.global_batch)
