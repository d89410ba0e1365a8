"""Shared specs for the seqpar tests: FlexSP's GPT-7B (shared/docs/reference/flexsp.md §2.3: 32 layers, hidden 4096,
64 heads) on FlexSP's testbed (8 x 8 A100-40GB, 400 Gb/s IB per node = 6.25 GB/s per GPU), and small clusters
where the exact MILP solves in well under a second."""
from functools import cache

from paraplan.seqpar.costmodel import build_cost_model
from paraplan.specs.loaders import cluster_from_dict, model_from_dict

GPT_7B = {"name": "gpt-7b-flexsp", "layers": 32, "hidden": 4096, "heads": 64, "ffn": 16384, "vocab": 50257,
          "norm": "layernorm", "linear_bias": True, "max_position": 393216}


@cache
def gpt7b():
    return model_from_dict(dict(GPT_7B))


@cache
def flexsp_cluster(nodes: int = 8):
    return cluster_from_dict({"base": "dgx-a100-40gb", "nodes": nodes,
                              "inter_node": {"name": "ib-hdr-2x200", "bandwidth_gbps": 6.25, "latency_us": 8}})


def small_cost_model(nodes: int = 2, **kw):
    """16 GPUs of FlexSP's testbed, GPT-7B: shapes 1, 2, 4, 8, 16 (one crosses nodes)."""
    return build_cost_model(gpt7b(), flexsp_cluster(nodes), **kw)
