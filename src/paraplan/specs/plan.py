"""Plan: a Strategy with its estimate (time breakdown, memory per GPU, throughput)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from paraplan.specs.strategy import Strategy


@dataclass
class TimeBreakdown:
    """Seconds of one iteration on the critical path. compute + exposed comm + bubble + optimizer + overhead = total."""
    compute_s: float = 0.0                  # forward + backward (+ recompute) on the busiest stage
    recompute_s: float = 0.0                # part of compute_s spent recomputing activations
    exposed_comm_s: dict[str, float] = field(default_factory=dict)    # by kind: tp, cp, ep, dp, pp, zero
    overlapped_comm_s: dict[str, float] = field(default_factory=dict)  # hidden behind compute, by kind
    overlap_slowdown_s: float = 0.0         # compute slowed while communication runs beside it
    bubble_s: float = 0.0                   # pipeline idle time of the critical stage
    optimizer_s: float = 0.0
    overhead_s: float = 0.0                 # framework fixed costs per iteration / micro-batch

    @property
    def exposed_comm_total_s(self) -> float:
        return sum(self.exposed_comm_s.values())


@dataclass
class MemoryBreakdown:
    """GiB on the most loaded GPU."""
    weights_gib: float = 0.0
    gradients_gib: float = 0.0
    optimizer_gib: float = 0.0
    activations_gib: float = 0.0
    transient_gib: float = 0.0              # logits / loss, recompute working set, ZeRO-3 gather buffers
    overhead_gib: float = 0.0               # CUDA context, NCCL buffers, allocator fragmentation
    capacity_gib: float = 0.0

    @property
    def total_gib(self) -> float:
        return (self.weights_gib + self.gradients_gib + self.optimizer_gib + self.activations_gib
                + self.transient_gib + self.overhead_gib)

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.capacity_gib


@dataclass
class Timeline:
    """What a trace needs to draw the iteration: the simulated pipeline (with its events) and each pipeline rank's
    tail after its last backward. Index r is the pipeline rank."""
    pipeline: object                       # sim.engine.PipelineResult, events recorded
    forward_s: list[list[float]]           # [rank][chunk] one micro-batch's forward on the compute stream
    backward_s: list[list[float]]
    p2p_s: float                           # one pipeline send/receive
    p2p_overlapped: bool
    dp_exposed_s: list[float]              # gradient reduction left after the last backward
    dp_overlapped_s: list[float]
    optimizer_s: list[float]
    iteration_overhead_s: float


@dataclass
class Plan:
    strategy: Strategy
    iteration_time_s: float
    time: TimeBreakdown
    memory: MemoryBreakdown
    tokens_per_s: float
    model_tflops_per_gpu: float
    mfu: float
    flop_formula: str
    assumptions: list[str] = field(default_factory=list)
    timeline: "Timeline | None" = field(default=None, repr=False, compare=False)  # with estimate(record_events=True)

    def to_dict(self) -> dict:
        d = {"strategy": asdict(self.strategy), "iteration_time_s": self.iteration_time_s,
             "time_breakdown": asdict(self.time), "memory_gib_per_gpu": self.memory.total_gib,
             "memory_breakdown_gib": asdict(self.memory), "fits_in_memory": self.memory.fits,
             "tokens_per_s": self.tokens_per_s, "model_tflops_per_gpu": self.model_tflops_per_gpu, "mfu": self.mfu,
             "flop_formula": self.flop_formula, "assumptions": list(self.assumptions)}
        d["time_breakdown"]["exposed_comm_total_s"] = self.time.exposed_comm_total_s
        return d
