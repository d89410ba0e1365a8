"""Variable-length sequence parallelism (FlexSP, ASPLOS'25): per-step sequence-parallel groups of different sizes,
planned from paraplan's own cost model. `plan_step` is the runtime's entry point; `report.evaluate` compares a
plan with static Ulysses SP, static CP and the per-batch best homogeneous degree."""
from paraplan.seqpar.costmodel import GroupShape, SeqParCostModel, build_cost_model
from paraplan.seqpar.planner import BatchPlan, plan_batch, plan_step
from paraplan.seqpar.types import GroupAssignment, MicroBatchPlan, StepPlan

__all__ = ["plan_step", "plan_batch", "BatchPlan", "build_cost_model", "SeqParCostModel", "GroupShape",
           "StepPlan", "MicroBatchPlan", "GroupAssignment"]
