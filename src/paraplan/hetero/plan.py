"""HeteroPlan: a pipeline whose stages sit on node groups of possibly different GPU types.

Stage i runs layers_per_stage[i] consecutive layers on tp_i * cp * dp_i GPUs of node group `group_i`. Every stage
sees the same micro-batch of `microbatch_sequences` sequences, split evenly over its dp_i data-parallel ranks (so a
stage on many slow GPUs and one on few fast GPUs can keep pace: uneven per-GPU batch shares). Stages are placed on
their group's GPUs in order, packed node by node. ZeRO stage and recompute are chosen per stage.

Context parallelism: one degree cp for every stage (as Megatron's --context-parallel-size: a stage's cp rank j
sends its sequence chunk to cp rank j of the next stage, so neighbours must cut the sequence alike).
Interleaving (vpp > 1, Megatron's interleaved 1F1B): stage i holds vpp chunks of its layers, as even as possible
(the first ones take the remainder), chunk c being virtual stage i + c * pp in model order. Uneven counts per
stage stay expressible in Megatron through --pipeline-model-parallel-layout (one count per virtual stage); each
stage needs at least vpp layers, and the micro-batches per iteration must be a multiple of pp (schedules.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from paraplan.errors import ParaplanError
from paraplan.specs.plan import MemoryBreakdown
from paraplan.specs.strategy import RECOMPUTE_MODES


@dataclass(frozen=True)
class HeteroStage:
    group: int                 # index into cluster.node_groups
    tp: int
    dp: int
    layers: int
    zero: int = 0
    recompute: str = "none"
    cp: int = 1                # context-parallel degree (the same on every stage of a plan)

    @property
    def num_gpus(self) -> int:
        return self.tp * self.cp * self.dp

    def describe(self) -> str:
        return (f"g{self.group}:tp={self.tp}," + (f"cp={self.cp}," if self.cp > 1 else "")
                + f"dp={self.dp},L={self.layers},zero={self.zero},rc={self.recompute}")


@dataclass(frozen=True)
class HeteroPlan:
    stages: tuple[HeteroStage, ...]
    microbatch_sequences: int          # sequences per micro-batch through the pipeline (split over each stage's dp)
    vpp: int = 1                       # virtual stages (chunks) per stage; > 1: interleaved 1F1B

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ParaplanError("a heterogeneous plan needs at least one stage")
        if not isinstance(self.vpp, int) or isinstance(self.vpp, bool) or self.vpp < 1:
            raise ParaplanError(f"vpp must be a positive integer, got {self.vpp!r}")
        if self.vpp > 1 and len(self.stages) < 2:
            raise ParaplanError(f"interleaving (vpp={self.vpp}) needs at least two stages")
        if len({s.cp for s in self.stages}) > 1:
            raise ParaplanError(f"stages have cp {[s.cp for s in self.stages]}; a plan has one context-parallel "
                                f"degree (neighbours must cut the sequence alike)")
        for i, s in enumerate(self.stages):
            for name in ("tp", "dp", "cp", "layers"):
                v = getattr(s, name)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ParaplanError(f"stage {i}: {name} must be a positive integer, got {v!r}")
            if s.recompute not in RECOMPUTE_MODES:
                raise ParaplanError(f"stage {i}: recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {s.recompute!r}")
            if s.layers < self.vpp:
                raise ParaplanError(f"stage {i}: {s.layers} layers cannot fill vpp={self.vpp} virtual stages")
            if self.microbatch_sequences % s.dp:
                raise ParaplanError(f"stage {i}: micro-batch of {self.microbatch_sequences} sequences cannot be split "
                                    f"evenly over dp={s.dp}")

    @property
    def pp(self) -> int:
        return len(self.stages)

    @property
    def layers_per_stage(self) -> tuple[int, ...]:
        return tuple(s.layers for s in self.stages)

    @property
    def cp(self) -> int:
        return self.stages[0].cp

    @property
    def num_gpus(self) -> int:
        return sum(s.num_gpus for s in self.stages)

    def virtual_layers(self) -> tuple[int, ...]:
        """Layers of each virtual stage in model order (pp * vpp counts): stage i's chunk c is entry c * pp + i."""
        chunks = [chunk_layers(s.layers, self.vpp) for s in self.stages]
        return tuple(chunks[i][c] for c in range(self.vpp) for i in range(self.pp))

    def _head(self) -> str:
        return (f"pp={self.pp}" + (f" vpp={self.vpp}" if self.vpp > 1 else "")
                + (f" cp={self.cp}" if self.cp > 1 else "") + f" mb={self.microbatch_sequences}")

    def describe(self) -> str:
        return self._head().replace(" ", ",") + " | " + " | ".join(s.describe() for s in self.stages)

    def summary(self) -> str:
        """Runs of stages of one shape: "pp=3 mb=16: g1 x1 tp=1 dp=16 L=9 | g0 x2 tp=1 dp=16 L=11,12"."""
        runs: list[list] = []
        for s in self.stages:
            shape = (s.group, s.tp, s.dp, s.zero, s.recompute)
            if runs and runs[-1][0] == shape:
                runs[-1][1].append(s.layers)
            else:
                runs.append([shape, [s.layers]])
        parts = [f"g{g} x{len(ls)} tp={tp} dp={dp} L={','.join(map(str, ls))}"
                 + (f" zero={z}" if z else "") + (f" rc={rc}" if rc != "none" else "")
                 for (g, tp, dp, z, rc), ls in runs]
        return f"{self._head()}: " + " | ".join(parts)

    def with_layers(self, layers) -> "HeteroPlan":
        return replace(self, stages=tuple(replace(s, layers=int(n)) for s, n in zip(self.stages, layers)))


def chunk_layers(layers: int, vpp: int) -> tuple[int, ...]:
    """A stage's layers over its vpp chunks, as even as possible, the first chunks taking the remainder."""
    base, extra = divmod(layers, vpp)
    return tuple(base + (c < extra) for c in range(vpp))


@dataclass
class StageResult:
    """One stage of an estimated plan: its GPU, per micro-batch times and memory on that GPU."""
    gpu: str
    forward_s: float              # one micro-batch, p2p send folded in
    backward_s: float
    p2p_s: float                  # send to the next stage (0 for the last)
    dp_exposed_s: float
    optimizer_s: float
    memory: MemoryBreakdown
    busy_s: float = 0.0
    bubble_s: float = 0.0


@dataclass
class HeteroEstimate:
    plan: HeteroPlan
    iteration_time_s: float
    tokens_per_s: float
    model_tflops_per_gpu: float   # over the GPUs the plan uses
    stages: list[StageResult]
    critical_stage: int
    assumptions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(s.memory.fits for s in self.stages)

    def to_dict(self) -> dict:
        return {"plan": self.plan.describe(), "stages": [asdict(s) for s in self.plan.stages],
                "microbatch_sequences": self.plan.microbatch_sequences, "vpp": self.plan.vpp,
                "gpus_used": self.plan.num_gpus,
                "iteration_time_s": self.iteration_time_s, "tokens_per_s": self.tokens_per_s,
                "model_tflops_per_gpu": self.model_tflops_per_gpu, "fits_in_memory": self.fits,
                "critical_stage": self.critical_stage,
                "stage_detail": [{"gpu": s.gpu, "forward_s": s.forward_s, "backward_s": s.backward_s,
                                  "p2p_s": s.p2p_s, "dp_exposed_s": s.dp_exposed_s, "optimizer_s": s.optimizer_s,
                                  "busy_s": s.busy_s, "bubble_s": s.bubble_s,
                                  "memory_gib": s.memory.total_gib, "capacity_gib": s.memory.capacity_gib}
                                 for s in self.stages],
                "assumptions": list(self.assumptions)}
