"""The vocabulary: what is trained (ModelSpec), on what (ClusterSpec), how much (JobSpec), how (Strategy)."""
from paraplan.specs.model import ModelSpec, MoESpec, MLASpec
from paraplan.specs.cluster import GPUSpec, LinkSpec, NodeGroup, ClusterSpec
from paraplan.specs.job import JobSpec
from paraplan.specs.strategy import Strategy
from paraplan.specs.plan import Plan

__all__ = ["ModelSpec", "MoESpec", "MLASpec", "GPUSpec", "LinkSpec", "NodeGroup", "ClusterSpec", "JobSpec",
           "Strategy", "Plan"]
