"""Data-parallel replicas of different speeds with uneven batch shares (hetero/replicas.py): the cross-replica
reduction by hand, identical replicas reduce to the homogeneous estimate with an even split, the bisection equals
brute force, the search equals its exhaustive mode, and the planner and CLI report the family."""
from __future__ import annotations

import itertools
import json
import random

import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.hetero.compare import plan_hetero
from paraplan.hetero.estimate import HeteroContext, as_strategy, estimate_hetero
from paraplan.hetero.plan import HeteroPlan, HeteroStage
from paraplan.hetero.replica_search import layouts, nominal_shares, search_replicas, set_partitions
from paraplan.hetero.replicas import (ReplicaPlan, _all_splits, best_shares, best_split, cross_reduce_time,
                                      cut_cluster, estimate_replicas, replica_time, sub_cluster)
from paraplan.hetero.space import SpaceOptions
from paraplan.specs import JobSpec
from paraplan.specs.loaders import cluster_from_dict, load_model, model_from_dict

SMALL = model_from_dict({"name": "small8", "layers": 8, "hidden": 512, "heads": 8, "ffn": 2048, "vocab": 4096,
                         "max_position": 1024, "norm": "rmsnorm", "gated_mlp": True, "linear_bias": False})


def mixed(a100_gpus=4, v100_gpus=4):
    return cluster_from_dict({"name": "a100+v100", "node_groups": [{"preset": "dgx-a100", "num_gpus": a100_gpus},
                                                                    {"preset": "dgx-v100", "num_gpus": v100_gpus}]})


def two_a100(gpus=4):
    return cluster_from_dict({"name": "a100x2", "node_groups": [{"preset": "dgx-a100", "num_gpus": gpus},
                                                                {"preset": "dgx-a100", "num_gpus": gpus}]})


def test_cross_replica_reduction_by_hand():
    """2 replicas of 4 GPUs each: every GPU owns 1/4 of the fp32 gradients; a 2-rank ring all-reduce (bus factor
    2(n-1)/n = 1) over the slower network (V100 EDR, 100 Gbit/s = 12.5 GB/s, 85% efficiency), 2 network hops."""
    model, job, cluster = SMALL, JobSpec(global_batch=16, seq_len=1024), mixed(4, 4)
    ctx = HeteroContext(model, cluster, job)
    plan = ReplicaPlan((HeteroPlan((HeteroStage(0, 1, 4, 8),), 4), HeteroPlan((HeteroStage(1, 2, 2, 8),), 2)),
                       (3, 2))
    nbytes = model.total_params() * 4 / 4
    bw = 12.5e9 * 0.85 * nbytes / (nbytes + 11e6)
    assert cluster.node_groups[1].inter_node.bandwidth_gbps == 12.5
    assert cross_reduce_time(ctx, plan) == pytest.approx(15e-6 + 2 * 8e-6 + nbytes / bw, rel=1e-12)
    # the iteration: the slower replica with its own batch share (12 and 4 sequences), then the reduction
    est = estimate_replicas(model, cluster, job, plan, ctx)
    assert plan.shares == (12, 4)
    a = estimate_hetero(model, cluster, JobSpec(global_batch=12, seq_len=1024), plan.replicas[0])
    b = estimate_hetero(model, cluster, JobSpec(global_batch=4, seq_len=1024), plan.replicas[1])
    assert est.iteration_time_s == pytest.approx(max(a.iteration_time_s, b.iteration_time_s)
                                                 + est.cross_reduce_s, rel=1e-12)
    assert est.tokens_per_s == pytest.approx(16 * 1024 / est.iteration_time_s)
    assert [r.stages[0].memory.total_gib for r in est.replicas] == [a.stages[0].memory.total_gib,
                                                                    b.stages[0].memory.total_gib]


@pytest.mark.parametrize("tp,dp,pp,gb", [(1, 4, 1, 32), (2, 2, 1, 16), (1, 2, 2, 24)])
def test_identical_replicas_split_evenly_and_reduce_to_the_homogeneous_estimate(tp, dp, pp, gb):
    model, cluster = SMALL, two_a100(tp * dp * pp)
    job = JobSpec(global_batch=gb, seq_len=1024)
    ctx = HeteroContext(model, cluster, job)
    mk = lambda g: HeteroPlan(tuple(HeteroStage(g, tp, dp, 8 // pp) for _ in range(pp)), dp)  # noqa: E731
    best = best_split(ctx, (mk(0), mk(1)))
    assert best.plan.shares == (gb // 2, gb // 2)
    assert best_split(ctx, (mk(0), mk(1)), exhaustive=True).plan == best.plan
    # each replica is the homogeneous estimate of its strategy on one group with half the batch
    half = JobSpec(global_batch=gb // 2, seq_len=1024)
    one = sub_cluster(cluster, (0,))
    homo = estimate(model, one, half, as_strategy(HeteroContext(model, one, half), mk(0)))
    assert best.iteration_time_s == pytest.approx(homo.iteration_time_s + best.cross_reduce_s, rel=1e-12)


def test_faster_replica_takes_the_larger_share():
    """llama3-8b on tp=8 per replica: A100 (312 TFLOP/s) takes more sequences than V100 (125); the split is the
    crossing point: one micro-batch more for A100 would make it the slower replica."""
    model, job = load_model("llama3-8b"), JobSpec(global_batch=64, seq_len=2048)
    ctx = HeteroContext(model, mixed(8, 8), job)
    a, b = HeteroPlan((HeteroStage(0, 8, 1, 32),), 1), HeteroPlan((HeteroStage(1, 8, 1, 32),), 1)
    best = best_split(ctx, (a, b))
    a100, v100 = best.plan.shares
    assert a100 > 1.3 * v100 and a100 + v100 == 64 and best.fits
    assert best.plan == best_split(ctx, (a, b), exhaustive=True).plan
    ta, tb = (r.iteration_time_s for r in best.replicas)
    assert replica_time(ctx, a, a100 + 1).iteration_time_s > max(ta, tb)


@pytest.mark.parametrize("gb,mbs,shapes", [
    (48, (4, 2), ((1, 4, 1), (2, 1, 2))),
    (60, (2, 6), ((2, 2, 2), (1, 2, 1))),
    (64, (8, 4), ((1, 8, 1), (4, 1, 1))),
])
def test_bisection_equals_brute_force(gb, mbs, shapes):
    model, job, cluster = SMALL, JobSpec(global_batch=gb, seq_len=1024), mixed(8, 4)
    ctx = HeteroContext(model, cluster, job)
    plans = [HeteroPlan(tuple(HeteroStage(g, tp, dp, 8 // pp) for _ in range(pp)), mb)
             for g, ((tp, dp, pp), mb) in enumerate(zip(shapes, mbs))]
    fast, brute = best_split(ctx, plans), best_split(ctx, plans, exhaustive=True)
    assert fast.plan == brute.plan and fast.iteration_time_s == brute.iteration_time_s
    assert sum(k * mb for k, mb in zip(fast.plan.microbatches, mbs)) == gb


def test_search_equals_exhaustive_and_each_side_is_on_its_groups():
    model, job, cluster = SMALL, JobSpec(global_batch=16, seq_len=1024), mixed(4, 4)
    fast = search_replicas(model, cluster, job, top_k=2)
    full = search_replicas(model, cluster, job, top_k=2, exhaustive=True)
    assert [e.plan for e in fast.plans] == [e.plan for e in full.plans]
    assert fast.best.iteration_time_s == full.best.iteration_time_s and fast.best.fits
    assert fast.best.plan.groups(0) == (0,) and fast.best.plan.groups(1) == (1,)


def test_nominal_shares_and_bad_replica_plans():
    assert nominal_shares(256, 0.72) == [160, 192] and nominal_shares(16, 0.9) == [14]
    # 11.6 of 128 sequences, below one unit of 16: also 8, the power of two below it
    assert nominal_shares(128, 0.091) == [8, 16]
    model, job, cluster = SMALL, JobSpec(global_batch=16, seq_len=1024), mixed(4, 4)
    a, b = HeteroPlan((HeteroStage(0, 1, 4, 8),), 4), HeteroPlan((HeteroStage(1, 1, 4, 8),), 4)
    with pytest.raises(ParaplanError, match="disjoint"):
        ReplicaPlan((a, a), (2, 2))
    with pytest.raises(ParaplanError, match="sum to 12"):
        estimate_replicas(model, cluster, job, ReplicaPlan((a, b), (2, 1)))
    with pytest.raises(ParaplanError, match="at least two"):
        ReplicaPlan((a,), (4,))


def test_planner_and_cli_report_the_replica_family():
    model, job = SMALL, JobSpec(global_batch=32, seq_len=1024)
    result = plan_hetero(model, mixed(8, 8), job, executor="serial")
    rep = result.replicas.best
    assert rep is not None and rep.fits
    assert result.best_tokens_per_s >= rep.tokens_per_s
    assert result.recommended in ("heterogeneous", "replicas", "homogeneous_subset")
    assert (result.recommended == "replicas") == (rep.tokens_per_s > max(
        result.search.best.tokens_per_s, result.baselines["homogeneous_subset"].tokens_per_s or 0))
    out = CliRunner().invoke(app, ["hetero-plan", "--model", "debug", "--cluster", "examples/hetero_a100_v100.yaml",
                                   "--global-batch", "16", "--seq-len", "512", "--executor", "serial", "--json",
                                   "--no-baselines"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)["replicas"]["best"]
    assert sum(doc["batch_shares"]) == 16 and doc["cross_reduce_s"] > 0 and len(doc["replicas"]) >= 2
    assert "not every replica plan" in json.loads(out.stdout)["replicas"]["family"]


# ---- more than two replicas, shared node groups -------------------------------------------------------------------
def _brute_shares(table, mbs, total):
    """The rule of best_shares by enumeration: smallest slowest time, then smallest largest share, then smallest
    shares in order."""
    best = None
    for ks in _all_splits(mbs, total):
        t = max(table[r][k - 1] for r, k in enumerate(ks))
        key = (t, max(k * mb for k, mb in zip(ks, mbs)), ks)
        if t < float("inf") and (best is None or key < best):
            best = key
    return best[2] if best else None


def test_best_shares_equals_brute_force_on_random_monotone_times():
    """2 to 4 replicas, micro-batches of 1-4 sequences, non-decreasing times with plateaus (ties) and a memory limit
    (inf beyond some k): best_shares gives the enumeration's answer on every case."""
    rng = random.Random(7)
    for case in range(300):
        R = rng.choice((2, 3, 3, 4))
        mbs = [rng.choice((1, 2, 3, 4)) for _ in range(R)]
        total = rng.randint(sum(mbs), 24)
        table = []
        for r in range(R):
            steps = [rng.choice((0.0, 0.5, 1.0, 2.0)) for _ in range(total)]
            times = list(itertools.accumulate(steps, initial=rng.uniform(0, 3)))[1:]
            limit = rng.choice((total, total, rng.randint(1, total)))
            table.append([t if k < limit else float("inf") for k, t in enumerate(times)])
        got = best_shares(lambda r, k: table[r][k - 1], mbs, total)
        assert got == _brute_shares(table, mbs, total), (case, mbs, total)


def test_best_shares_by_hand():
    """Replica times 1 s per micro-batch and 2 s per micro-batch (mb = 1 both), 6 sequences: (4, 2) gives max(4, 4);
    three equal replicas of mb 2 on 12 sequences split 4/4/4; no split when a replica cannot take even one."""
    assert best_shares(lambda r, k: k * (1.0 if r == 0 else 2.0), [1, 1], 6) == (4, 2)
    assert best_shares(lambda r, k: float(k), [2, 2, 2], 12) == (2, 2, 2)
    assert best_shares(lambda r, k: float("inf") if r == 1 else 1.0, [1, 1], 4) is None
    assert best_shares(lambda r, k: 1.0, [4, 4], 6) is None          # 6 is not a sum of two multiples of 4


def test_three_replicas_split_equals_brute_force():
    model, job = SMALL, JobSpec(global_batch=24, seq_len=1024)
    cluster = cut_cluster(mixed(16, 8), (2, 1))          # two 8-GPU A100 pieces and the V100 node
    ctx = HeteroContext(model, cluster, job)
    plans = (HeteroPlan((HeteroStage(0, 1, 4, 8),), 4), HeteroPlan((HeteroStage(1, 2, 2, 4),) * 2, 2, vpp=2),
             HeteroPlan((HeteroStage(2, 2, 2, 8),), 2))
    fast = best_split(ctx, plans, cuts=(2, 1))
    brute = best_split(ctx, plans, exhaustive=True, cuts=(2, 1))
    assert fast.plan == brute.plan and fast.iteration_time_s == brute.iteration_time_s and len(fast.plan.shares) == 3
    assert fast.plan.microbatches[1] % 2 == 0          # the interleaved replica takes micro-batches in pairs (pp=2)
    # the same plan estimated from the uncut cluster (cut as the plan says) gives the same time
    again = estimate_replicas(model, mixed(16, 8), job, fast.plan)
    assert again.iteration_time_s == fast.iteration_time_s
    assert "g0 part 1/2" in fast.plan.summary() and "g1 [" in fast.plan.summary()


def test_cut_cluster_and_layouts_by_hand():
    cluster = mixed(32, 16)                               # 4 A100 nodes, 2 V100 nodes
    cut = cut_cluster(cluster, (2, 1))
    assert [(g.gpu.name, g.num_nodes) for g in cut.node_groups] == [("A100-SXM4-80GB", 2)] * 2 + [("V100-SXM2-32GB", 2)]
    with pytest.raises(ParaplanError, match="cannot be cut into 3"):
        cut_cluster(cluster, (3, 1))
    assert len(list(set_partitions((0, 1, 2)))) == 5 and len(list(set_partitions((0, 1, 2, 3)))) == 15  # Bell numbers
    # up to 3 replicas: whole groups {A}{V}; A cut in 2 + V; V cut in 2 + A; A cut in 3 is impossible (4 nodes)
    assert {(lay.cuts, lay.replicas) for lay in layouts(cluster, 3)} == {
        ((1, 1), ((0,), (1,))), ((2, 1), ((2,), (0,), (1,))), ((1, 2), ((0,), (1,), (2,)))}
    # up to 4: also A cut in 4 alone would need V as a fifth; A in 2 and V in 2 gives 4 replicas
    assert ((2, 2), ((0,), (1,), (2,), (3,))) in {(lay.cuts, lay.replicas) for lay in layouts(cluster, 4)}
    assert [lay.cuts for lay in layouts(cluster, 3, cut=False)] == [(1, 1)]


def test_node_links_follow_their_nodes_into_sub_and_cut_clusters():
    """g0n3-g1n0 is global nodes (3, 4) and g0n1 is node 1 (4 A100 nodes first); the V100 group alone renumbers
    g1n0 to 0 and drops both entries (each touches an A100 node); cutting keeps every node's number."""
    cluster = cluster_from_dict({"name": "x", "node_groups": [{"preset": "dgx-a100", "num_nodes": 4},
                                                              {"preset": "dgx-v100", "num_nodes": 2}],
                                 "node_links": [{"nodes": ["g0n3", "g1n0"], "bandwidth_gbps": 2},
                                                {"node": "g0n1", "bandwidth_gbit": 25}]})
    assert [nl.nodes for nl in cluster.extra["node_links"]] == [(3, 4), (1,)]
    assert sub_cluster(cluster, (1,)).extra["node_links"] == ()
    assert [nl.nodes for nl in sub_cluster(cluster, (0,)).extra["node_links"]] == [(1,)]
    assert [nl.nodes for nl in cut_cluster(cluster, (2, 1)).extra["node_links"]] == [(3, 4), (1,)]


def test_search_with_shared_groups_equals_exhaustive():
    """Two A100 nodes and one V100 node, up to 3 replicas: the pruned search (bisection, combination bound) gives
    the exhaustive search's plans (every split of every combination)."""
    model, job, cluster = SMALL, JobSpec(global_batch=16, seq_len=1024), mixed(16, 8)
    opts = SpaceOptions(tp=(1, 2), recompute=("none",), zero=(1,))          # cp and vpp 1 or 2
    fast = search_replicas(model, cluster, job, opts, top_k=2, max_replicas=3)
    full = search_replicas(model, cluster, job, opts, top_k=2, max_replicas=3, exhaustive=True)
    assert [e.plan for e in fast.plans] == [e.plan for e in full.plans]
    assert fast.best.iteration_time_s == full.best.iteration_time_s and fast.layouts == 2
    two = search_replicas(model, cluster, job, opts, top_k=1, max_replicas=2)
    assert fast.best.iteration_time_s <= two.best.iteration_time_s      # a larger family never does worse
    with pytest.raises(ParaplanError, match="max_replicas"):
        search_replicas(model, cluster, job, max_replicas=1)
