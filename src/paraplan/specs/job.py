"""JobSpec: what one optimizer step processes, and with which numerics and framework."""
from __future__ import annotations

from dataclasses import dataclass

from paraplan.errors import ParaplanError

FRAMEWORKS = ("megatron-lm", "megatron-deepspeed", "nemo", "torchtitan", "maxtext", "deepspeed", "other")
JOB_PRECISIONS = ("fp16", "bf16", "fp8")


@dataclass(frozen=True)
class JobSpec:
    global_batch: int                  # sequences per optimizer step
    seq_len: int
    precision: str = "bf16"            # compute precision of GEMMs (fp8: TE-style, master weights still bf16/fp32)
    framework: str = "megatron-lm"     # selects calibration and engine defaults
    memory_headroom: float = 0.0       # fraction of HBM kept free when judging fit
    # False for a measured run: the engine evidently ran its strategy, so what paraplan believes the framework
    # cannot run (frameworks.FRAMEWORK_LIMITS) is modelled anyway instead of refused
    enforce_framework_limits: bool = True

    def __post_init__(self):
        if not isinstance(self.global_batch, int) or self.global_batch <= 0:
            raise ParaplanError(f"global_batch must be a positive integer, got {self.global_batch!r}")
        if not isinstance(self.seq_len, int) or self.seq_len <= 0:
            raise ParaplanError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        if self.precision not in JOB_PRECISIONS:
            raise ParaplanError(f"precision must be one of {', '.join(JOB_PRECISIONS)}, got {self.precision!r}")
        if self.framework not in FRAMEWORKS:
            raise ParaplanError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {self.framework!r}")
        if not 0 <= self.memory_headroom < 1:
            raise ParaplanError(f"memory_headroom must be in [0, 1), got {self.memory_headroom}")

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len
