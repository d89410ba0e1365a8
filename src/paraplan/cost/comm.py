"""Communication cost: alpha-beta per collective, placed on the links the group actually spans.

Rank order follows Megatron (`order="tp-cp-ep-dp-pp"`, parallel_state.py): TP innermost, so a group of dimension X
has stride = product of the degrees inside X. A group keeps `ranks_per_node` of its members on each node and spans
`nodes` nodes. Bus-bandwidth factors are nccl-tests' (perf_models.md 3.1.1); a flat ring across nodes is limited by
ranks_per_node NICs per node (3.1.3); all-to-all only sends (n - g)/n of its data off the node; bandwidth rises with
message size as S / (S + S_half) (SimAI/vTrain measured curves, 3.1.4).

Where a cluster declares its topology in more detail (several links per level, node_links overrides), a collective
across nodes also prices the hierarchical algorithm and, for an all-reduce inside a node of several links,
reduce-scatter and all-gather on different links, and takes the fastest (collective_choice; NCCL also picks per
size). Node overrides reach a group through `cap`: the slowest override its ring cannot avoid, over the job's groups
packed from node 0 in rank order (specs/topology.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from paraplan.cost import measured
from paraplan.cost.calibration import Calibration
from paraplan.specs import LinkSpec, Strategy
from paraplan.specs.topology import (NodeLink, link_sets, sends_bottleneck, set_bandwidth, slowest_group_link,
                                     usable_together)

RANK_ORDER = ("tp", "cp", "dp", "pp")   # EP groups are carved out of cp*dp (expert data parallel) in the same order


@dataclass(frozen=True)
class Group:
    size: int
    ranks_per_node: int
    nodes: int
    cap: tuple[float, float] | None = None     # (GB/s per GPU, latency us) of a node override it must cross
    detailed_topology: bool = False             # the cluster declares node overrides: choose the algorithm

    @property
    def crosses_nodes(self) -> bool:
        return self.nodes > 1


def place(size: int, stride: int, gpus_per_node: int, overrides: tuple[NodeLink, ...] = (), world: int = 0,
          every_pair: bool = False) -> Group:
    """Where a group of `size` ranks, `stride` apart in rank order, lands on nodes of `gpus_per_node` GPUs; with
    node `overrides`, the slowest one any such group of a `world`-rank job crosses (every pair for all-to-all)."""
    if size <= 1:
        return Group(1, 1, 1)
    if stride >= gpus_per_node:
        per_node = 1
    else:
        per_node = max(1, min(size, gpus_per_node // stride))
    nodes = math.ceil(size / per_node)
    cap = None
    if overrides and nodes > 1:
        cap = slowest_group_link(size, stride, gpus_per_node, max(world, size * stride), overrides, not every_pair)
    return Group(size, per_node, nodes, cap, bool(overrides))


def group_of(dim: str, strategy: Strategy, gpus_per_node: int, overrides: tuple[NodeLink, ...] = ()) -> Group:
    """Placement of the `dim` group ("tp", "cp", "ep", "dp", "pp")."""
    if dim == "ep":
        # expert-parallel ranks are consecutive after expert TP (Megatron expert grid etp-ep-edp)
        return place(strategy.ep, strategy.expert_tp, gpus_per_node, overrides, strategy.world_size, every_pair=True)
    stride = 1
    for inner in RANK_ORDER[:RANK_ORDER.index(dim)]:
        stride *= getattr(strategy, inner)
    return place(getattr(strategy, dim), stride, gpus_per_node, overrides, strategy.world_size)


def gradient_group(strategy: Strategy, gpus_per_node: int, experts: bool = False,
                   overrides: tuple[NodeLink, ...] = ()) -> Group:
    """The ranks that reduce one gradient shard: dp*cp replicas after TP (Megatron reduces over dp x cp), or for
    expert weights the expert-data-parallel ranks after expert TP x EP."""
    if experts:
        return place(strategy.expert_dp, strategy.ep * strategy.expert_tp, gpus_per_node, overrides,
                     strategy.world_size)
    return place(strategy.dp * strategy.cp, strategy.tp, gpus_per_node, overrides, strategy.world_size)


BUS_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
              "reduce_scatter": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n}


def collective_time(op: str, nbytes: float, group: Group, intra: LinkSpec, inter: LinkSpec, cal: Calibration) -> float:
    """Seconds for one collective. `nbytes` is nccl-tests' S: the all-reduce buffer, the all-gather output, the
    reduce-scatter input, or what one rank sends in an all-to-all (its whole send buffer)."""
    return collective_choice(op, nbytes, group, intra, inter, cal)[0]


def _bw(link: LinkSpec, efficiency: float) -> float:
    return link.bandwidth_gbps * 1e9 * efficiency


def _size_eff(nbytes: float, cal: Calibration) -> float:
    return nbytes / (nbytes + cal.comm_half_size_bytes)


def _capped_gbps(inter: LinkSpec, cap: tuple[float, float] | None) -> float:
    """GB/s per GPU of the network path: the NIC, or a slower node override (`cap`) it crosses."""
    return inter.bandwidth_gbps if cap is None else min(inter.bandwidth_gbps, cap[0])


def _cap_latency_s(cap: tuple[float, float] | None, inter: LinkSpec) -> float:
    """Extra seconds per network step when the slowest override crossed has a longer latency than the NIC."""
    return 0.0 if cap is None else max(0.0, cap[1] - inter.latency_us) * 1e-6


def _nic_bw(op: str, group: Group, inter: LinkSpec, cal: Calibration) -> float:
    """Bytes/s one GPU's network path keeps in this group: its NIC, the leaf/spine share, a node override."""
    return _capped_gbps(inter, group.cap) * 1e9 * cal.inter_node_efficiency * inter.spine_factor(op, group.nodes)


def flat_ring_time(op: str, nbytes: float, group: Group, intra: LinkSpec, inter: LinkSpec, cal: Calibration) -> float:
    """One ring (or all-to-all) over all n ranks; across nodes g channels cross each node boundary, each on one
    GPU's NIC, while the intra-node hops run at the same time, so the slower of the two sets the pace."""
    n = group.size
    intra_bw = _bw(intra, cal.intra_node_efficiency)
    if op == "all_reduce" and intra.nvls and group.ranks_per_node > 4:
        intra_bw *= cal.nvls_speedup                         # NVLS is used from 5 GPUs per node up (ml-engineering)
    latency = collective_latency(op, group, cal)
    if group.crosses_nodes:
        nic_bw = _nic_bw(op, group, inter, cal)
        g = group.ranks_per_node
        if op == "all_to_all":
            inter_bus = nic_bw * (n - 1) / max(n - g, 1)
        else:
            inter_bus = nic_bw * g
        bus_bw = min(intra_bw, inter_bus) if g > 1 else inter_bus
        k = group.nodes
        latency += (2 * (k - 1) if op == "all_reduce" else k - 1) * _cap_latency_s(group.cap, inter)
    else:
        bus_bw = intra_bw
    return latency + BUS_FACTOR[op](n) * nbytes / (bus_bw * _size_eff(nbytes, cal))


def hierarchical_time(op: str, nbytes: float, group: Group, intra: LinkSpec, inter: LinkSpec,
                      cal: Calibration) -> float:
    """Inside each node a reduce-scatter over the g local ranks (S on the intra link), then one collective per
    GPU over its NIC between the k nodes on its S/g shard, then an all-gather inside the node: (g-1)/g S / B_intra
    per intra phase and the inter phase's bus factor over k on S/g / B_nic. An all-gather runs the two phases the
    other way round; a reduce-scatter only needs the first two."""
    g, k = group.ranks_per_node, group.nodes
    local, across = Group(g, g, 1), Group(k, 1, k, group.cap)
    shard = nbytes / g
    intra_phase = (collective_latency("reduce_scatter", local, cal) + BUS_FACTOR["reduce_scatter"](g) * nbytes
                   / (_bw(intra, cal.intra_node_efficiency) * _size_eff(nbytes, cal)))
    inter_steps = 2 * (k - 1) if op == "all_reduce" else k - 1
    inter_phase = (collective_latency(op, across, cal) + inter_steps * _cap_latency_s(group.cap, inter)
                   + BUS_FACTOR[op](k) * shard / (_nic_bw(op, across, inter, cal) * _size_eff(shard, cal)))
    return inter_phase + (2 if op == "all_reduce" else 1) * intra_phase


def split_rs_ag_time(nbytes: float, group: Group, level: LinkSpec, efficiency: float, cal: Calibration) -> tuple:
    """An all-reduce as a reduce-scatter on one set of the level's links and an all-gather on another: (seconds,
    set names) of the best pair. Successive buckets overlap the two phases when the two sets can run together
    (pipelined: the slower phase sets the pace), else they take turns. With sets A and B usable together, one ring
    striped over A+B (2 / (A + B) per byte) is never slower than max(1/A, 1/B), so this wins only where the
    level's best set cannot be used by one ring."""
    n = group.size
    per_phase = BUS_FACTOR["reduce_scatter"](n) * nbytes / _size_eff(nbytes, cal)
    latency = 2 * collective_latency("reduce_scatter", group, cal)
    best = (math.inf, "")
    for rs in link_sets(level.parts):
        for ag in link_sets(level.parts):
            if set(rs) & set(ag):
                continue
            t_rs, t_ag = (per_phase / (set_bandwidth(x) * 1e9 * efficiency) for x in (rs, ag))
            seconds = latency + (max(t_rs, t_ag) if usable_together(rs + ag) else t_rs + t_ag)
            name = "+".join(link.name for link in rs) + "|" + "+".join(link.name for link in ag)
            best = min(best, (seconds, name))
    return best


def collective_choice(op: str, nbytes: float, group: Group, intra: LinkSpec, inter: LinkSpec,
                      cal: Calibration) -> tuple[float, str]:
    """(seconds, algorithm) of the fastest way to run one collective: a measured curve when the hardware profile
    has one ("measured"), else the flat ring ("ring"); where the cluster declares several links per level or
    node overrides, also "hierarchical" across nodes and, for an all-reduce inside a node of several links,
    "rs_ag_split:RS-LINKS|AG-LINKS". Other clusters keep the flat ring the validation data were fitted with."""
    n = group.size
    if n <= 1 or nbytes <= 0:
        return 0.0, "none"
    if cal.comm_measured:           # a hardware profile measured this group shape: its curve, not the model
        seconds = measured.collective_seconds(cal.comm_measured, op, nbytes, n, group.nodes)
        if seconds is not None:
            return seconds, "measured"
    options = {"ring": flat_ring_time(op, nbytes, group, intra, inter, cal)}
    detailed = bool(intra.parts or inter.parts or group.detailed_topology)
    if detailed and op != "all_to_all" and group.crosses_nodes and group.ranks_per_node > 1:
        options["hierarchical"] = hierarchical_time(op, nbytes, group, intra, inter, cal)
    if op == "all_reduce" and len(intra.parts) > 1 and not group.crosses_nodes:
        seconds, links = split_rs_ag_time(nbytes, group, intra, cal.intra_node_efficiency, cal)
        options[f"rs_ag_split:{links}"] = seconds
    best = min(options, key=options.get)
    return options[best], best


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


def p2p_time(nbytes: float, crosses_nodes: bool, intra: LinkSpec, inter: LinkSpec, cal: Calibration,
             share: float = 1.0, cap: tuple[float, float] | None = None) -> float:
    """One send/recv between neighbouring pipeline stages. Across nodes each sender keeps `share` of its NIC
    (LinkSpec.p2p_share: leaf uplinks shared by a stage boundary's senders) and no more than a node override
    `cap` (GB/s, latency us) on its path."""
    if nbytes <= 0:
        return 0.0
    if cal.comm_measured:
        seconds = measured.collective_seconds(cal.comm_measured, "send_recv", nbytes, 2, 2 if crosses_nodes else 1)
        if seconds is not None:
            return seconds
    if crosses_nodes:
        bw = _capped_gbps(inter, cap) * 1e9 * cal.inter_node_efficiency * share
        latency = cal.collective_latency_s + cal.inter_node_latency_s + _cap_latency_s(cap, inter)
    else:
        bw = intra.bandwidth_gbps * 1e9 * cal.intra_node_efficiency
        latency = cal.collective_latency_s
    return latency + nbytes / (bw * _size_eff(nbytes, cal))


def pp_send(strategy: Strategy, gpus_per_node: int, inter: LinkSpec,
            overrides: tuple[NodeLink, ...] = ()) -> tuple[float, tuple[float, float] | None]:
    """(NIC share, override cap) of the pipeline sends of a job packed from node 0: stage i's S = tp*cp*dp ranks
    send rank r -> r + S, all at once; a stage spans ceil(S / g) nodes of the job's ceil(world / g)."""
    stage = strategy.tp * strategy.cp * strategy.dp
    share = inter.p2p_share(-(-stage // gpus_per_node), -(-strategy.world_size // gpus_per_node))
    cap = None
    if overrides and strategy.pp > 1:
        cap = sends_bottleneck(frozenset((r // gpus_per_node, (r + stage) // gpus_per_node)
                                         for r in range(stage * (strategy.pp - 1))), overrides)
    return share, cap


def pp_crosses_nodes(strategy: Strategy, gpus_per_node: int) -> bool:
    """Neighbouring pipeline stages are tp*cp*dp ranks apart."""
    return strategy.tp * strategy.cp * strategy.dp >= gpus_per_node
