"""Heterogeneous clusters: pipeline stages on node groups of different GPU types, with uneven layers, TP and
data parallelism per stage, each stage costed on its own hardware (hetero/estimate.py), layers balanced by speed
and memory (hetero/balance.py), and an exact branch-and-bound search with baselines (hetero/search.py)."""
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan, HeteroStage

__all__ = ["HeteroEstimate", "HeteroPlan", "HeteroStage"]
