"""Communication cost: alpha-beta per collective, placed on the links the group actually spans.

Rank order follows Megatron (`order="tp-cp-ep-dp-pp"`, parallel_state.py): TP innermost, so a group of dimension X
has stride = product of the degrees inside X. A group keeps `ranks_per_node` of its members on each node and spans
`nodes` nodes. Bus-bandwidth factors are nccl-tests' (perf_models.md 3.1.1); a flat ring across nodes is limited by
ranks_per_node NICs per node (3.1.3); all-to-all only sends (n - g)/n of its data off the node; bandwidth rises with
message size as S / (S + S_half) (SimAI/vTrain measured curves, 3.1.4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from paraplan.cost import measured
from paraplan.cost.calibration import Calibration
from paraplan.specs import LinkSpec, Strategy

RANK_ORDER = ("tp", "cp", "dp", "pp")   # EP groups are carved out of cp*dp (expert data parallel) in the same order


@dataclass(frozen=True)
class Group:
    size: int
    ranks_per_node: int
    nodes: int

    @property
    def crosses_nodes(self) -> bool:
        return self.nodes > 1


def place(size: int, stride: int, gpus_per_node: int) -> Group:
    """Where a group of `size` ranks, `stride` apart in rank order, lands on nodes of `gpus_per_node` GPUs."""
    if size <= 1:
        return Group(1, 1, 1)
    if stride >= gpus_per_node:
        per_node = 1
    else:
        per_node = max(1, min(size, gpus_per_node // stride))
    return Group(size, per_node, math.ceil(size / per_node))


def group_of(dim: str, strategy: Strategy, gpus_per_node: int) -> Group:
    """Placement of the `dim` group ("tp", "cp", "ep", "dp", "pp")."""
    if dim == "ep":
        # expert-parallel ranks are consecutive after expert TP (Megatron expert grid etp-ep-edp)
        return place(strategy.ep, strategy.expert_tp, gpus_per_node)
    stride = 1
    for inner in RANK_ORDER[:RANK_ORDER.index(dim)]:
        stride *= getattr(strategy, inner)
    return place(getattr(strategy, dim), stride, gpus_per_node)


def gradient_group(strategy: Strategy, gpus_per_node: int, experts: bool = False) -> Group:
    """The ranks that reduce one gradient shard: dp*cp replicas after TP (Megatron reduces over dp x cp), or for
    expert weights the expert-data-parallel ranks after expert TP x EP."""
    if experts:
        return place(strategy.expert_dp, strategy.ep * strategy.expert_tp, gpus_per_node)
    return place(strategy.dp * strategy.cp, strategy.tp, gpus_per_node)


BUS_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
              "reduce_scatter": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n}


def collective_time(op: str, nbytes: float, group: Group, intra: LinkSpec, inter: LinkSpec, cal: Calibration) -> float:
    """Seconds for one collective. `nbytes` is nccl-tests' S: the all-reduce buffer, the all-gather output, the
    reduce-scatter input, or what one rank sends in an all-to-all (its whole send buffer)."""
    n = group.size
    if n <= 1 or nbytes <= 0:
        return 0.0
    if cal.comm_measured:           # a hardware profile measured this group shape: its curve, not the model
        seconds = measured.collective_seconds(cal.comm_measured, op, nbytes, n, group.nodes)
        if seconds is not None:
            return seconds
    intra_bw = intra.bandwidth_gbps * 1e9 * cal.intra_node_efficiency
    if op == "all_reduce" and intra.nvls and group.ranks_per_node > 4:
        intra_bw *= cal.nvls_speedup                         # NVLS is used from 5 GPUs per node up (ml-engineering)
    if group.crosses_nodes:
        nic_bw = inter.bandwidth_gbps * 1e9 * cal.inter_node_efficiency * inter.spine_factor(op, group.nodes)
        g = group.ranks_per_node
        if op == "all_to_all":
            inter_bus = nic_bw * (n - 1) / max(n - g, 1)
        else:
            inter_bus = nic_bw * g
        bus_bw = min(intra_bw, inter_bus) if g > 1 else inter_bus
    else:
        bus_bw = intra_bw
    size_eff = nbytes / (nbytes + cal.comm_half_size_bytes)
    return collective_latency(op, group, cal) + BUS_FACTOR[op](n) * nbytes / (bus_bw * size_eff)


def collective_latency(op: str, group: Group, cal: Calibration) -> float:
    """Fixed cost of a collective, NCCL-style (tuning.cc): a base cost plus one hop latency per ring step, the
    steps that cross nodes paying the network hop (nInterSteps = k - 1 for all-gather / reduce-scatter /
    all-to-all, 2(k - 1) for a ring all-reduce of 2(n - 1) steps). Across nodes an all-reduce may instead take a
    tree with 2 log2(k) network hops. Rings over thousands of ranks are latency-bound for this reason."""
    n, k = group.size, group.nodes
    steps = 2 * (n - 1) if op == "all_reduce" else n - 1
    inter_steps = 2 * (k - 1) if op == "all_reduce" else k - 1
    ring = (cal.collective_latency_s + (steps - inter_steps) * cal.intra_hop_latency_s
            + inter_steps * cal.inter_node_latency_s)
    if op == "all_reduce" and k > 1:
        tree = (cal.collective_latency_s + 2 * (group.ranks_per_node - 1) * cal.intra_hop_latency_s
                + 2 * math.ceil(math.log2(k)) * cal.inter_node_latency_s)
        return min(ring, tree)
    return ring


def p2p_time(nbytes: float, crosses_nodes: bool, intra: LinkSpec, inter: LinkSpec, cal: Calibration) -> float:
    """One send/recv between neighbouring pipeline stages."""
    if nbytes <= 0:
        return 0.0
    if cal.comm_measured:
        seconds = measured.collective_seconds(cal.comm_measured, "send_recv", nbytes, 2, 2 if crosses_nodes else 1)
        if seconds is not None:
            return seconds
    if crosses_nodes:
        bw = inter.bandwidth_gbps * 1e9 * cal.inter_node_efficiency
        latency = cal.collective_latency_s + cal.inter_node_latency_s
    else:
        bw = intra.bandwidth_gbps * 1e9 * cal.intra_node_efficiency
        latency = cal.collective_latency_s
    size_eff = nbytes / (nbytes + cal.comm_half_size_bytes)
    return latency + nbytes / (bw * size_eff)


def pp_crosses_nodes(strategy: Strategy, gpus_per_node: int) -> bool:
    """Neighbouring pipeline stages are tp*cp*dp ranks apart."""
    return strategy.tp * strategy.cp * strategy.dp >= gpus_per_node
