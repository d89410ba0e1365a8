"""Topology beyond one link per level: several physical links, node overrides, algorithm choice, tier-aware pipeline
sends, and the one-line errors for bad cluster files and traces. Every number is derived next to its assert."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.cost.calibration import Calibration, calibration_for
from paraplan.cost.comm import (Group, collective_choice, flat_ring_time, hierarchical_time, p2p_time, place,
                                pp_send, split_rs_ag_time)
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.hetero.estimate import estimate_hetero, link_between
from paraplan.hetero.plan import HeteroPlan, HeteroStage
from paraplan.network.trace import apply, read_trace
from paraplan.specs import JobSpec, LinkSpec, Strategy
from paraplan.specs.loaders import cluster_from_dict, load_cluster, load_model, model_from_dict
from paraplan.specs.topology import NodeLink, _ring_avoids, combine_links, ring_bottleneck

# no latency, no efficiency loss, no size curve: times are bytes / bandwidth, easy to derive by hand
PURE = Calibration(comm_half_size_bytes=0.0, collective_latency_s=0.0, intra_hop_latency_s=0.0,
                   inter_node_latency_s=0.0, intra_node_efficiency=1.0, inter_node_efficiency=1.0)
NVLINK = LinkSpec("nvlink", 300.0, 3.0)
IB = LinkSpec("ib", 25.0, 8.0)
SMALL = model_from_dict({"name": "small8", "layers": 8, "hidden": 512, "heads": 8, "ffn": 2048, "vocab": 4096,
                         "max_position": 1024, "norm": "rmsnorm", "gated_mlp": True, "linear_bias": False})


def slow(*nodes: int, gbps: float = 5.0, latency_us: float = 8.0) -> NodeLink:
    return NodeLink(nodes, LinkSpec("slow", gbps, latency_us))


# ---- several links per level -----------------------------------------------------------------------------------
def test_best_set_of_links_usable_together():
    # NVLink 50 and PCIe 25 cannot run at once, a NIC loopback 12.5 can run beside either:
    # sets {nv, nic} = 62.5 > {pcie, nic} = 37.5 > {nv} = 50 ...; {nv, pcie} is not allowed
    nv = LinkSpec("nv", 50, 3, exclusive_with=("pcie",))
    pcie = LinkSpec("pcie", 25, 5)
    nic = LinkSpec("nic", 12.5, 10)
    level = combine_links((nv, pcie, nic))
    assert level.bandwidth_gbps == 62.5 and level.name == "nv+nic" and level.latency_us == 10
    assert level.parts == (nv, pcie, nic)
    assert combine_links((nv,)) is nv                         # one link stays exactly as it is


def test_example_4090_file_levels():
    # pcie-p2p (25) excludes pcie-host (20); nic-loopback 100 Gb/s = 12.5 GB/s runs beside either:
    # best 25 + 12.5 = 37.5 GB/s
    c = load_cluster("examples/cluster_4090_pcie_nic.yaml")
    intra = c.primary.intra_node
    assert intra.bandwidth_gbps == 37.5 and intra.name == "pcie-p2p+nic-loopback" and len(intra.parts) == 3
    assert c.primary.inter_node == LinkSpec("roce-100", 12.5, 10.0)     # a single mapping is kept as written


def test_single_mapping_link_unchanged():
    a = cluster_from_dict({"base": "dgx-a100", "nodes": 2})
    assert a.primary.intra_node == LinkSpec("nvlink3", 300.0, 3.0) and a.primary.intra_node.parts == ()
    assert a.primary == load_cluster("dgx-a100:16").primary


def test_rs_ag_split_priced_but_one_striped_ring_is_never_slower():
    # two links usable together, A = 40 and B = 10 GB/s, 8 GPUs, S = 1 GB: one ring striped over A + B = 50 GB/s
    # takes 2 * 7/8 * 1e9 / 50e9 = 35 ms; RS on A while the previous bucket's AG runs on B (pipelined) takes
    # max(7/8 / 40, 7/8 / 10) s per GB = 87.5 ms; on exclusive links they take turns: 7/8 (1/40 + 1/10) = 109.4 ms
    a, b = LinkSpec("a", 40, 3), LinkSpec("b", 10, 3)
    level = combine_links((a, b))
    group = Group(8, 8, 1)
    assert split_rs_ag_time(1e9, group, level, 1.0, PURE) == pytest.approx((0.0875, "a|b"))
    assert collective_choice("all_reduce", 1e9, group, level, IB, PURE) == pytest.approx((0.035, "ring"))
    ex = combine_links((LinkSpec("a", 40, 3, exclusive_with=("b",)), b))
    assert split_rs_ag_time(1e9, group, ex, 1.0, PURE)[0] == pytest.approx(0.875 * (1 / 40 + 1 / 10))


# ---- algorithm choice ------------------------------------------------------------------------------------------
def test_hierarchical_all_reduce_wins_with_fast_intra_slow_nics():
    # 16 ranks, 8 per node, 2 nodes, NVLink 300, NIC 12.5 GB/s per GPU, S = 1.6 GB.
    # flat ring: 2 * 15/16 * S / min(300, 8 * 12.5 = 100) GB/s = 1.875 * 1.6 / 100 = 30 ms
    # hierarchical: RS + AG inside the node 2 * 7/8 * S / 300 = 9.333 ms, then each GPU's NIC all-reduces its S/8
    # over 2 nodes: 2 * 1/2 * 0.2 GB / 12.5 = 16 ms; total 25.333 ms
    nic = LinkSpec("nic", 12.5, 8)
    plain, declared = Group(16, 8, 2), Group(16, 8, 2, None, True)
    assert flat_ring_time("all_reduce", 1.6e9, plain, NVLINK, nic, PURE) == pytest.approx(0.030)
    assert hierarchical_time("all_reduce", 1.6e9, plain, NVLINK, nic, PURE) == pytest.approx(0.009333333 + 0.016)
    # a cluster without declared topology keeps the flat ring the validation data were fitted with
    assert collective_choice("all_reduce", 1.6e9, plain, NVLINK, nic, PURE) == pytest.approx((0.030, "ring"))
    assert collective_choice("all_reduce", 1.6e9, declared, NVLINK, nic, PURE) == \
        pytest.approx((0.025333333, "hierarchical"))
    # all-gather: inter-node AG of S/8 over 2 nodes (1/2 * 0.2 / 12.5 = 8 ms) + intra AG 7/8 * 1.6 / 300 (4.667 ms)
    assert hierarchical_time("all_gather", 1.6e9, plain, NVLINK, nic, PURE) == pytest.approx(0.008 + 0.875 * 1.6 / 300)


def test_measured_profile_keeps_precedence():
    # a profile that measured all-reduce over 16 ranks on 2 nodes: 0.1 s at 1 GB, whatever the topology says
    cal = Calibration(comm_measured=(("all_reduce", 16, 2, 1e8, 0.01), ("all_reduce", 16, 2, 1e9, 0.1)))
    assert collective_choice("all_reduce", 1e9, Group(16, 8, 2, None, True), NVLINK, IB, cal) == pytest.approx((0.1, "measured"))


# ---- node overrides --------------------------------------------------------------------------------------------
def test_ring_can_avoid_one_slow_pair_only_from_four_nodes():
    # a ring over 2 or 3 nodes makes every pair neighbours (the triangle); over 4 it can go a, c, b, d
    assert not _ring_avoids({(0, 1)}, 2) and not _ring_avoids({(0, 1)}, 3)
    assert _ring_avoids({(0, 1)}, 4)
    # two slow pairs at node 0 (0-1, 0-2) among 4 nodes: node 0 needs two ring neighbours outside {1, 2}; only
    # node 3 is left, so no order works; with a fifth node 4: 3, 0, 4, 1, 2
    assert not _ring_avoids({(0, 1), (0, 2)}, 4)
    assert _ring_avoids({(0, 1), (0, 2)}, 5)


def test_ring_bottleneck_slow_node_and_pairs():
    four = frozenset(range(4))
    assert ring_bottleneck(four, (slow(0, 1),)) is None                        # avoided
    assert ring_bottleneck(frozenset(range(3)), (slow(0, 1),)) == (5.0, 8.0)  # a triangle cannot avoid it
    assert ring_bottleneck(four, (slow(2, gbps=7.0),)) == (7.0, 8.0)          # a slow node always counts
    assert ring_bottleneck(four, (slow(0, 1),), avoidable=False) == (5.0, 8.0)  # all-to-all: every pair talks
    # pairs 0-1 at 2 and 0-2 at 4 over 4 nodes: both cannot be avoided (above), avoiding only 0-1 can -> 4 GB/s
    assert ring_bottleneck(four, (slow(0, 1, gbps=2.0), slow(0, 2, gbps=4.0, latency_us=30))) == (4.0, 30)
    assert ring_bottleneck(frozenset({0, 5}), (slow(0, 1),)) is None          # not inside the group


def test_groups_are_placed_from_node_0_and_the_slowest_group_counts():
    # tp=8, dp=2, pp=2 on nodes of 8: DP groups {0, 8} on nodes 0-1 and {16, 24} on nodes 2-3. A slow node 3
    # is in the second group; the step waits for it: cap 5 GB/s
    assert place(2, 8, 8, (slow(3),), world=32).cap == (5.0, 8.0)
    assert place(2, 8, 8, (slow(5),), world=32).cap is None                   # a node the job does not use
    # dp = 4 over nodes 0-3, slow pair 0-1: a 4-node ring avoids it; the all-reduce keeps the NICs' 25 GB/s:
    # 2 * 3/4 * 1 GB / 25 = 60 ms. dp = 3 (nodes 0-2) cannot: 2 * 2/3 * 1 GB / 5 GB/s = 266.7 ms
    four, three = place(4, 8, 8, (slow(0, 1),), world=32), place(3, 8, 8, (slow(0, 1),), world=24)
    assert collective_choice("all_reduce", 1e9, four, NVLINK, IB, PURE) == pytest.approx((0.060, "ring"))
    assert collective_choice("all_reduce", 1e9, three, NVLINK, IB, PURE) == pytest.approx((0.26666667, "ring"))


def test_slow_node_longer_latency_adds_per_network_step():
    # all-gather over 4 nodes, one rank each: k - 1 = 3 network steps, each 30 - 8 = 22 us longer at the slow node
    # (8 us is IB's own latency), plus 3/4 * 1 GB / 5 GB/s = 150 ms
    group = place(4, 8, 8, (slow(1, latency_us=30.0),), world=32)
    assert collective_choice("all_gather", 1e9, group, NVLINK, IB, PURE)[0] == pytest.approx(0.150 + 3 * 22e-6)


def test_estimate_slow_rack_example_is_slower_and_says_which_algorithm():
    job = JobSpec(global_batch=64, seq_len=1024)
    s = Strategy(tp=4, dp=16, pp=1, micro_batch=1)
    model = load_model("llama3-8b")              # gradients large enough for bandwidth to decide
    base = estimate(model, load_cluster("dgx-a100:64"), job, s)
    rack = estimate(model, load_cluster("examples/cluster_slow_rack.yaml", 64), job, s)
    assert rack.iteration_time_s > base.iteration_time_s
    # DP groups of 16 ranks, 2 per node over 8 nodes; one crosses slow node n6 (12.5 GB/s): hierarchical costs
    # 2 * 1/2 * S / 300 + 2 * 7/8 * (S/2) / 12.5 against the flat 2 * 15/16 * S / min(300, 2 * 12.5): cheaper
    assert any("hierarchical" in a for a in rack.assumptions)


# ---- pipeline sends across leaves ------------------------------------------------------------------------------
def test_pipeline_send_keeps_leaf_uplink_share():
    # leaves of 4 nodes at 4:1; stages of tp*dp = 16 ranks = 2 nodes, 8 nodes in all: in a leaf the last 2 nodes
    # (16 NICs) send to the next leaf through 4 * 8 / 4 = 8 NICs' worth of uplink: each keeps 8/16 = 0.5
    fabric = LinkSpec("ib", 25, 8, nodes_per_leaf=4, oversubscription=4)
    assert fabric.p2p_share(2, 8) == 0.5
    assert fabric.p2p_share(1, 8) == 1.0                   # 8 NICs send up through 8 NICs' worth: full rate
    assert fabric.p2p_share(4, 8) == fabric.p2p_share(8, 16) == 0.25    # a stage fills a leaf: 1/oversubscription
    assert fabric.p2p_share(2, 4) == 1.0                   # the job fits in one leaf
    share, cap = pp_send(Strategy(tp=8, dp=2, pp=4), 8, fabric)
    assert (share, cap) == (0.5, None)
    # 1 GB at 25 GB/s * 0.5 = 80 ms
    assert p2p_time(1e9, True, NVLINK, fabric, PURE, share) == pytest.approx(0.080)


def test_pipeline_send_pays_the_override_on_its_node_pair():
    # tp=8, pp=4 on nodes of 8: stage i is node i and sends to node i+1: pairs (0,1), (1,2), (2,3)
    s = Strategy(tp=8, dp=1, pp=4)
    assert pp_send(s, 8, IB, (slow(1, 2),))[1] == (5.0, 8.0)
    assert pp_send(s, 8, IB, (slow(0, 2),))[1] is None      # no stage sends from node 0 to node 2


# ---- bad cluster files: one line each --------------------------------------------------------------------------
A100 = {"preset": "dgx-a100", "num_nodes": 2}


@pytest.mark.parametrize("data, message", [
    ({"gpu": "A100", "gpus_per_node": 8, "nodes": 2, "intra_node": {"bandwidth_gbps": 300}},
     "without it the group's 2 nodes are disconnected"),
    ({"node_groups": [A100, A100], "group_links": [{"groups": [0, 1], "down": True}]},
     "node group 1 is disconnected"),
    ({"node_groups": [A100, A100, A100], "group_links": [{"groups": [0, 1], "down": True},
                                                          {"groups": [1, 2], "bandwidth_gbps": 0}]},
     "node group 1 is disconnected"),
    ({"base": "dgx-a100", "intra_node": [{"name": "a", "bandwidth_gbps": -3}]}, "must be a positive number"),
    ({"base": "dgx-a100", "node_links": [{"node": "n0", "bandwidth_gbps": 0}]}, "must be a positive number"),
    ({"base": "dgx-a100", "nodes": 4, "node_links": [{"nodes": ["n1", "n4"], "bandwidth_gbps": 1}]},
     "node 'n4' does not exist"),
    ({"node_groups": [A100, A100], "node_links": [{"nodes": ["g0n1", "g2n0"], "bandwidth_gbps": 1}]},
     "node 'g2n0' does not exist"),
    ({"node_groups": [A100, A100], "node_links": [{"nodes": ["n1", "g1n0"], "bandwidth_gbps": 1}]},
     "must be written gInJ"),
    ({"base": "dgx-a100", "intra_node": [{"name": "a", "bandwidth_gbps": 3, "exclusive_with": ["b"]}]},
     "exclusive_with names 'b'"),
    ({"base": "dgx-a100", "intra_node": [{"name": "a", "bandwidth_gbps": 3}, {"name": "a", "bandwidth_gbps": 4}]},
     "is used twice"),
])
def test_bad_cluster_files_one_line(data, message):
    with pytest.raises(ParaplanError, match=message) as err:
        cluster_from_dict(data, where="cluster file 'x.yaml'")
    assert "\n" not in str(err.value) and str(err.value).startswith("cluster file 'x.yaml'")


def test_down_group_pair_is_relayed_through_another_group():
    # 0-1 down, 0-2 at 4 GB/s (10 us), 1-2 at 2 GB/s (20 us): 0 reaches 1 through 2, at min(4, 2) = 2 GB/s and
    # 10 + 20 = 30 us
    c = cluster_from_dict({"node_groups": [A100, A100, A100], "group_links": [
        {"groups": [0, 1], "down": True}, {"groups": [0, 2], "bandwidth_gbps": 4, "latency_us": 10},
        {"groups": [1, 2], "bandwidth_gbps": 2, "latency_us": 20}]})
    link = link_between(c, 0, 1)
    assert (link.bandwidth_gbps, link.latency_us) == (2.0, 30.0)


@pytest.mark.parametrize("command", ["estimate", "hetero-plan"])
def test_cli_bad_cluster_file_exits_with_one_line(tmp_path, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"node_groups": [A100, A100], "group_links": [{"groups": [0, 1], "down": True}]}))
    args = [command, "--model", "llama3-8b", "--cluster", str(bad), "--global-batch", "8", "--seq-len", "1024"]
    if command == "estimate":
        args += ["--strategy", "tp=8,dp=4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "node group 1 is disconnected" in lines[0]


# ---- traces ----------------------------------------------------------------------------------------------------
TWO = cluster_from_dict({"node_groups": [A100, A100],
                         "node_links": [{"nodes": ["g0n1", "g1n0"], "bandwidth_gbps": 6, "latency_us": 20}]})


def test_trace_changes_and_adds_node_overrides():
    trace = "time_s,link,bandwidth_gbps\n0,g0n1-g1n0,3\n0,g1n1,2\n600,g0.inter_node,down\n1200,end,\n"
    first, second = read_trace(trace, TWO)
    c, kept = apply(TWO, first)
    by_nodes = {o.nodes: o.link for o in c.extra["node_links"]}
    # the file's pair (global nodes 1 and 2) now at 3 GB/s with its 20 us; node g1n1 (global 3) added at 2 GB/s
    assert (by_nodes[(1, 2)].bandwidth_gbps, by_nodes[(1, 2)].latency_us) == (3.0, 20.0)
    assert by_nodes[(3,)].bandwidth_gbps == 2.0
    c2, kept2 = apply(TWO, second)            # group 0 cut off: group 1 is now group 0, its node 1 is global 1
    assert kept2 == (1,) and [o.nodes for o in c2.extra["node_links"]] == [(1,)]


@pytest.mark.parametrize("link, message", [
    ("g0n2", "node 'g0n2' does not exist"), ("g2n0-g0n0", "node 'g2n0' does not exist"),
    ("g0n0-g0n0", "names the same node twice"), ("g0n1-g1n0-g1n1", "does not exist in cluster"),
])
def test_trace_naming_missing_node_fails_in_one_line(link, message):
    with pytest.raises(ParaplanError, match=message) as err:
        read_trace(f"time_s,link,bandwidth_gbps\n0,{link},3\n", TWO)
    assert "\n" not in str(err.value)


def test_trace_node_pair_cannot_be_down():
    with pytest.raises(ParaplanError, match="cannot be down"):
        read_trace("time_s,link,bandwidth_gbps\n0,g0n1-g1n0,down\n", TWO)


# ---- heterogeneous pipeline sends ------------------------------------------------------------------------------
def test_hetero_send_pays_a_node_pair_override():
    # stage 0 on g0n0, stage 1 on g1n0: the send goes over the groups' link (min of the NICs, 25 GB/s, 8 us);
    # a node_links entry for that pair at 5 GB/s and 30 us replaces it: p2p at 5 GB/s, and 30 - 8 = 22 us more
    # latency than the 8 us path (the calibration's network hop latency already counts the NIC's)
    one = {"preset": "dgx-a100", "num_nodes": 1}
    plain = cluster_from_dict({"node_groups": [one, one]})
    paired = cluster_from_dict({"node_groups": [one, one],
                                "node_links": [{"nodes": ["g0n0", "g1n0"], "bandwidth_gbps": 5, "latency_us": 30}]})
    job = JobSpec(global_batch=8, seq_len=512)
    plan = HeteroPlan((HeteroStage(0, 8, 1, 4), HeteroStage(1, 8, 1, 4)), 1)
    hop = [estimate_hetero(SMALL, c, job, plan).stages[0].p2p_s for c in (plain, paired)]
    nbytes = 1 * 512 * 512 * 2 / 8                   # micro-batch x seq x hidden x 2 bytes, sharded over tp = 8 (SP)
    cal = calibration_for("A100-SXM4-80GB", "megatron-lm")
    assert hop[0] == pytest.approx(p2p_time(nbytes, True, NVLINK, IB, cal))
    assert hop[1] == pytest.approx(p2p_time(nbytes, True, NVLINK, LinkSpec("pair", 5, 8), cal) + 22e-6)
