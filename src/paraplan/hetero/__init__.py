"""Heterogeneous clusters: pipeline stages on node groups of different GPU types, with uneven layers, TP and
data parallelism per stage, one CP degree and interleaving per plan, each stage costed on its own hardware
(hetero/estimate.py), layers balanced by speed and memory (hetero/balance.py), an exact branch-and-bound search
with baselines (hetero/search.py), and data-parallel replicas with uneven batch shares (hetero/replicas.py,
hetero/replica_search.py)."""
from paraplan.hetero.plan import HeteroEstimate, HeteroPlan, HeteroStage

__all__ = ["HeteroEstimate", "HeteroPlan", "HeteroStage"]
