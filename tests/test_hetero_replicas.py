"""Data-parallel replicas of different speeds with uneven batch shares (hetero/replicas.py): the cross-replica
reduction by hand, identical replicas reduce to the homogeneous estimate with an even split, the bisection equals
brute force, the search equals its exhaustive mode, and the planner and CLI report the family."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.hetero.compare import plan_hetero
from paraplan.hetero.estimate import HeteroContext, as_strategy, estimate_hetero
from paraplan.hetero.plan import HeteroPlan, HeteroStage
from paraplan.hetero.replicas import (ReplicaPlan, best_split, cross_reduce_time, estimate_replicas, feasible_ks,
                                      nominal_shares, search_replicas, sub_cluster)
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
    best = best_split(ctx, mk(0), mk(1))
    assert best.plan.shares == (gb // 2, gb // 2)
    assert best_split(ctx, mk(0), mk(1), exhaustive=True).plan == best.plan
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
    best = best_split(ctx, a, b)
    a100, v100 = best.plan.shares
    assert a100 > 1.3 * v100 and a100 + v100 == 64 and best.fits
    assert best.plan == best_split(ctx, a, b, exhaustive=True).plan
    ta, tb = (r.iteration_time_s for r in best.replicas)
    from paraplan.hetero.replicas import replica_time
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
    fast, brute = best_split(ctx, *plans), best_split(ctx, *plans, exhaustive=True)
    assert fast.plan == brute.plan and fast.iteration_time_s == brute.iteration_time_s
    assert feasible_ks(gb, mbs) and all(k * mbs[0] < gb for k in feasible_ks(gb, mbs))


def test_search_equals_exhaustive_and_each_side_is_on_its_groups():
    model, job, cluster = SMALL, JobSpec(global_batch=16, seq_len=1024), mixed(4, 4)
    fast = search_replicas(model, cluster, job, top_k=2)
    full = search_replicas(model, cluster, job, top_k=2, exhaustive=True)
    assert [e.plan for e in fast.plans] == [e.plan for e in full.plans]
    assert fast.best.iteration_time_s == full.best.iteration_time_s and fast.best.fits
    assert fast.best.plan.groups(0) == (0,) and fast.best.plan.groups(1) == (1,)


def test_nominal_shares_and_bad_replica_plans():
    assert nominal_shares(256, 0.72) == [160, 192] and nominal_shares(16, 0.9) == [14]
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
    assert sum(doc["batch_shares"]) == 16 and doc["cross_reduce_s"] > 0 and len(doc["replicas"]) == 2
