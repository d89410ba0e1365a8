"""Communication model: rank placement and alpha-beta collective times."""
import pytest
from hypothesis import given, strategies as st

from paraplan.cost.calibration import Calibration
from paraplan.cost.comm import Group, collective_latency, collective_time, group_of, p2p_time, place
from paraplan.specs import LinkSpec, Strategy

NVLINK = LinkSpec("nvlink", 300.0, 3.0)
IB = LinkSpec("ib", 25.0, 8.0)
CAL = Calibration(comm_half_size_bytes=0.0, collective_latency_s=10e-6, inter_node_latency_s=20e-6,
                  intra_node_efficiency=1.0, inter_node_efficiency=1.0)


def test_placement_follows_megatron_rank_order():
    s = Strategy(tp=8, dp=4, pp=2)
    assert group_of("tp", s, 8) == Group(8, 8, 1)          # consecutive ranks: one node
    assert group_of("dp", s, 8) == Group(4, 1, 4)          # stride 8: one rank per node
    s2 = Strategy(tp=2, dp=16)
    assert group_of("dp", s2, 8) == Group(16, 4, 4)        # stride 2: 4 ranks per node, 4 nodes
    assert place(1, 1, 8) == Group(1, 1, 1)


def test_ring_all_reduce_within_a_node():
    # nccl-tests: t = 2(n-1)/n * S / busbw; 8 GPUs, 1 GB, 300 GB/s -> 1.75 * 1e9 / 300e9 = 5.833 ms, + 10 us latency
    t = collective_time("all_reduce", 1e9, Group(8, 8, 1), NVLINK, IB, CAL)
    assert t == pytest.approx(10e-6 + 1.75e9 / 300e9)


def test_ring_across_nodes_is_limited_by_the_nics_of_the_group():
    # 16 ranks, 8 per node, 2 nodes: bus bandwidth min(300, 8 * 25) = 200 GB/s;
    # latency 10 us + min(ring 2(k-1), tree 2 log2 k) = 2 network hops of 20 us
    t = collective_time("all_reduce", 1e9, Group(16, 8, 2), NVLINK, IB, CAL)
    assert t == pytest.approx(50e-6 + 2 * 15 / 16 * 1e9 / 200e9)
    # one rank per node: a single NIC carries the ring; ring all-gather over 4 nodes has k - 1 = 3 network hops
    t1 = collective_time("all_gather", 1e9, Group(4, 1, 4), NVLINK, IB, CAL)
    assert t1 == pytest.approx(10e-6 + 20e-6 * 3 + 0.75 * 1e9 / 25e9)


def test_ring_latency_grows_with_nodes_tree_all_reduce_with_log_nodes():
    # NCCL tuning.cc: ring all-gather pays k - 1 network hops; all-reduce may use a tree with 2 log2(k)
    big = Group(1024, 8, 128)
    assert collective_latency("all_gather", big, CAL) == pytest.approx(10e-6 + 127 * 20e-6)
    assert collective_latency("all_reduce", big, CAL) == pytest.approx(10e-6 + 2 * 7 * 20e-6)


def test_all_to_all_only_sends_off_node_share_over_nics():
    # 16 ranks, 8 per node: (n-1)/n * S / (B_nic * (n-1)/(n-g)) = (n-g)/n * S / B_nic = 0.5 * 1e9 / 25e9;
    # latency 10 us + (k - 1) = 1 network hop of 20 us
    t = collective_time("all_to_all", 1e9, Group(16, 8, 2), NVLINK, IB, CAL)
    assert t == pytest.approx(30e-6 + 0.5e9 / 25e9)


def test_size_dependent_efficiency_halves_bandwidth_at_half_size():
    cal = CAL.with_(comm_half_size_bytes=8e6)
    t_small = collective_time("all_gather", 8e6, Group(8, 8, 1), NVLINK, IB, cal) - 10e-6
    assert t_small == pytest.approx(2 * 7 / 8 * 8e6 / 300e9)


def test_p2p_uses_nic_across_nodes():
    assert p2p_time(25e6, True, NVLINK, IB, CAL) == pytest.approx(30e-6 + 25e6 / 25e9)
    assert p2p_time(300e6, False, NVLINK, IB, CAL) == pytest.approx(10e-6 + 1e-3)


@given(st.sampled_from(["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]),
       st.floats(1e3, 1e10), st.sampled_from([2, 4, 8, 16, 64]), st.floats(1.0, 4.0))
def test_more_bandwidth_is_never_slower(op, nbytes, n, factor):
    group = place(n, 1, 8)
    slow = collective_time(op, nbytes, group, NVLINK, IB, Calibration())
    fast = collective_time(op, nbytes, group, LinkSpec("nv", 300 * factor, 3), LinkSpec("ib", 25 * factor, 8), Calibration())
    assert fast <= slow


def test_leaf_spine_oversubscription_slows_cross_leaf_all_to_all_not_rings():
    # hand derivation (LinkSpec.spine_factor): 32 nodes, 16 per leaf, 4:1 uplinks. A ring keeps
    # min(1, 16/4) = 1 of the NIC bandwidth; an all-to-all sends (32-16)/32 of its traffic up at 1/4 of it,
    # so it keeps 1 / max(1, 4 * 0.5) = 1/2. Inside one leaf (16 nodes) nothing changes.
    from paraplan.specs.loaders import load_cluster
    flat = load_cluster("dgx-h100", 256).primary.inter_node
    tiered = load_cluster("examples/cluster_leaf_spine.yaml", 256).primary.inter_node
    assert tiered.spine_factor("all_reduce", 32) == 1.0
    assert tiered.spine_factor("all_to_all", 32) == pytest.approx(0.5)
    assert tiered.spine_factor("all_to_all", 16) == 1.0
    assert flat.spine_factor("all_to_all", 32) == 1.0
    cal = Calibration()
    group = place(256, 1, 8)                     # 256 ranks on 32 nodes
    intra = load_cluster("dgx-h100", 256).primary.intra_node
    slow = collective_time("all_to_all", 1e9, group, intra, tiered, cal)
    fast = collective_time("all_to_all", 1e9, group, intra, flat, cal)
    assert slow > fast
    assert collective_time("all_reduce", 1e9, group, intra, tiered, cal) == \
        collective_time("all_reduce", 1e9, group, intra, flat, cal)
