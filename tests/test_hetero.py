"""Heterogeneous plans: the estimate reduces to the homogeneous one, the balancer is exact, the search equals
exhaustive evaluation, the properties of the issue hold, and the CLI fails in one line."""
from __future__ import annotations

import itertools
import json
import random

import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.hetero.balance import balanced_split, power_split, relaxed_bottleneck, split_time
from paraplan.hetero.compare import plan_hetero
from paraplan.hetero.estimate import HeteroContext, as_strategy, estimate_hetero
from paraplan.hetero.plan import HeteroPlan, HeteroStage
from paraplan.hetero.search import search_hetero
from paraplan.hetero.space import SpaceOptions
from paraplan.specs import JobSpec
from paraplan.specs.loaders import cluster_from_dict, load_cluster, load_model, model_from_dict
from paraplan.specs.strategy import default_layer_split

# a small dense model: 8 layers, so exhaustive searches stay fast
SMALL = model_from_dict({"name": "small8", "layers": 8, "hidden": 512, "heads": 8, "ffn": 2048, "vocab": 4096,
                         "max_position": 1024, "norm": "rmsnorm", "gated_mlp": True, "linear_bias": False})


def mixed(a100_gpus=4, v100_gpus=4, v100_inter_gbit=None):
    v100 = {"preset": "dgx-v100", "num_gpus": v100_gpus}
    if v100_inter_gbit:
        v100["inter_node"] = {"bandwidth_gbit": v100_inter_gbit}
    return cluster_from_dict({"name": "a100+v100", "node_groups": [{"preset": "dgx-a100", "num_gpus": a100_gpus},
                                                                    v100]})


# ---- estimate ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tp,dp,pp", [(8, 1, 4), (4, 2, 4), (2, 2, 2), (1, 8, 4), (2, 1, 4)])
def test_even_plan_on_one_group_is_the_homogeneous_estimate(tp, dp, pp):
    """Stages of one shape on one node type are a plain Strategy: same time and memory as estimate()."""
    model, job = load_model("llama3-8b"), JobSpec(global_batch=64, seq_len=4096)
    cluster = load_cluster("dgx-a100", tp * dp * pp)
    ctx = HeteroContext(model, cluster, job)
    plan = HeteroPlan(tuple(HeteroStage(0, tp, dp, 32 // pp) for _ in range(pp)), dp)
    h = estimate_hetero(model, cluster, job, plan, ctx)
    e = estimate(model, cluster, job, as_strategy(ctx, plan))
    assert h.iteration_time_s == pytest.approx(e.iteration_time_s, rel=1e-12)
    assert max(s.memory.total_gib for s in h.stages) == pytest.approx(e.memory.total_gib, rel=1e-12)


@pytest.mark.parametrize("tp,cp,dp,pp,vpp", [(8, 1, 1, 4, 2), (4, 2, 1, 4, 1), (2, 2, 2, 4, 2), (1, 2, 4, 2, 4),
                                             (4, 1, 2, 4, 2)])
def test_interleaved_and_context_parallel_plans_are_the_homogeneous_estimate(tp, cp, dp, pp, vpp):
    """With cp and vpp too (stages of whole nodes, so every send costs the same as the homogeneous p2p)."""
    model, job = load_model("llama3-8b"), JobSpec(global_batch=64, seq_len=4096)
    cluster = load_cluster("dgx-a100", tp * cp * dp * pp)
    ctx = HeteroContext(model, cluster, job)
    plan = HeteroPlan(tuple(HeteroStage(0, tp, dp, 32 // pp, cp=cp) for _ in range(pp)), dp, vpp)
    h = estimate_hetero(model, cluster, job, plan, ctx)
    s = as_strategy(ctx, plan)
    assert (s.cp, s.vpp, s.world_size) == (cp, vpp, cluster.num_gpus)
    e = estimate(model, cluster, job, s)
    assert h.iteration_time_s == pytest.approx(e.iteration_time_s, rel=1e-12)
    assert max(st.memory.total_gib for st in h.stages) == pytest.approx(e.memory.total_gib, rel=1e-12)


def test_virtual_stages_of_uneven_stages():
    """Stages of 5 and 3 layers with vpp=2: chunks (3, 2) and (2, 1); virtual stages in model order are stage 0
    chunk 0, stage 1 chunk 0, stage 0 chunk 1, stage 1 chunk 1 -> (3, 2, 2, 1), Megatron's layout "t*3|t*2|t*2|t*1"."""
    plan = HeteroPlan((HeteroStage(0, 1, 4, 5), HeteroStage(1, 1, 4, 3)), 4, vpp=2)
    assert plan.virtual_layers() == (3, 2, 2, 1)
    assert plan.summary().startswith("pp=2 vpp=2 mb=4:")
    est = estimate_hetero(SMALL, mixed(), JobSpec(global_batch=16, seq_len=1024), plan)
    assert est.stages[1].p2p_s > 0            # the interleaved hop from the V100 stage back to the A100 stage


def test_each_stage_is_costed_on_its_own_gpu():
    """The same stage shape is slower on V100 (125 TFLOP/s) than on A100 (312), and judged against 32 vs 80 GB."""
    model, job = SMALL, JobSpec(global_batch=16, seq_len=1024)
    cluster = mixed()
    plan = HeteroPlan((HeteroStage(0, 1, 4, 4), HeteroStage(1, 1, 4, 4)), 4)
    est = estimate_hetero(model, cluster, job, plan)
    a100, v100 = est.stages
    assert (a100.gpu, v100.gpu) == ("A100-SXM4-80GB", "V100-SXM2-32GB")
    assert v100.backward_s > a100.backward_s
    assert a100.memory.capacity_gib > 2 * v100.memory.capacity_gib
    # the send between groups uses the slower network (V100 EDR 12.5 GB/s, A100 HDR 25 GB/s)
    assert a100.p2p_s > 0 and v100.p2p_s == 0


def test_bad_plans_are_one_line_errors():
    model, job, cluster = SMALL, JobSpec(global_batch=16, seq_len=1024), mixed()
    with pytest.raises(ParaplanError, match="node group 2 does not exist"):
        estimate_hetero(model, cluster, job, HeteroPlan((HeteroStage(2, 1, 4, 8),), 4))
    with pytest.raises(ParaplanError, match="no room"):
        estimate_hetero(model, cluster, job, HeteroPlan((HeteroStage(0, 1, 4, 4), HeteroStage(0, 2, 2, 4)), 4))
    with pytest.raises(ParaplanError, match="sum to 7"):
        estimate_hetero(model, cluster, job, HeteroPlan((HeteroStage(0, 1, 4, 3), HeteroStage(1, 1, 4, 4)), 4))
    with pytest.raises(ParaplanError, match="split evenly over dp=4"):
        HeteroPlan((HeteroStage(0, 1, 4, 8),), 2)
    with pytest.raises(ParaplanError, match="needs at least two stages"):
        HeteroPlan((HeteroStage(0, 1, 4, 8),), 4, vpp=2)
    with pytest.raises(ParaplanError, match="one context-parallel degree"):
        HeteroPlan((HeteroStage(0, 1, 2, 4, cp=2), HeteroStage(1, 1, 4, 4)), 4)
    with pytest.raises(ParaplanError, match="cannot fill vpp=3"):
        HeteroPlan((HeteroStage(0, 1, 4, 6), HeteroStage(1, 1, 4, 2)), 4, vpp=3)
    with pytest.raises(ParaplanError, match="multiple of pp"):     # 16 / 4 = 4 micro-batches over 3 stages
        estimate_hetero(model, mixed(8, 4), job, HeteroPlan((HeteroStage(0, 1, 4, 3),) * 2
                                                            + (HeteroStage(1, 1, 4, 2),), 4, vpp=2))


# ---- balancing -----------------------------------------------------------------------------------------------
def test_balanced_split_is_optimal_against_brute_force():
    """Also with a floor of `low` layers per stage (interleaving: vpp layers each)."""
    rng = random.Random(7)
    for _ in range(900):
        n = rng.randint(1, 4)
        low = rng.choice((1, 1, 2, 3))
        layers = rng.randint(n, 12)
        t = [rng.choice([0.1, 0.5, 1, 1.5, 3, 10]) for _ in range(n)]
        e = [rng.choice([0, 0.3, 1, 5]) for _ in range(n)]
        caps = [rng.randint(1, layers) for _ in range(n)]
        if sum(caps) < layers or min(caps) < low or n * low > layers:
            with pytest.raises(ParaplanError):
                balanced_split(t, e, layers, caps, low)
            continue
        best = min(split_time(s, t, e) for s in itertools.product(*[range(low, c + 1) for c in caps])
                   if sum(s) == layers)
        got = balanced_split(t, e, layers, caps, low)
        assert sum(got) == layers and all(low <= g <= c for g, c in zip(got, caps))
        assert split_time(got, t, e) == pytest.approx(best)
        assert relaxed_bottleneck(t, e, layers) <= best + 1e-12


def test_uneven_splits_reduce_to_even_on_identical_stages():
    for stages, layers in ((4, 32), (8, 80), (3, 12), (5, 5)):
        assert balanced_split([1.0] * stages, [0.0] * stages, layers) == default_layer_split(layers, stages)
        assert power_split([312.0] * stages, layers) == default_layer_split(layers, stages)


def test_power_split_follows_compute():
    # H100 989 vs V100 125 TFLOP/s: 80 layers -> 1 + 78 * 989/1114 = 70.2 and 1 + 78 * 125/1114 = 9.8
    assert power_split([989.0, 125.0], 80) == (70, 10)


# ---- search --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [("debug", 4, 4, 16), ("small", 4, 4, 16), ("small", 8, 4, 32), ("small", 2, 8, 8)])
def test_pruned_search_equals_exhaustive(case):
    name, a100, v100, gb = case
    model = load_model("debug") if name == "debug" else SMALL
    cluster, job = mixed(a100, v100), JobSpec(global_batch=gb, seq_len=512)
    # a smaller space keeps exhaustive fast (interleaving and CP: the next test)
    opts = SpaceOptions(tp=(1, 2), recompute=("none", "full"), cp=(1,), vpp=(1,))
    pruned = search_hetero(model, cluster, job, opts, top_k=3, executor="serial")
    full = search_hetero(model, cluster, job, opts, top_k=3, exhaustive=True, executor="serial")
    assert pruned.indices == full.indices
    assert [p.iteration_time_s for p in pruned.plans] == [p.iteration_time_s for p in full.plans]
    assert pruned.stats.simulated < full.stats.simulated


@pytest.mark.parametrize("cp,vpp,a100,gb", [((2,), (2,), 8, 16), ((1, 2), (1, 2, 4), 8, 16), ((1, 2), (1, 2), 16, 32)])
def test_pruned_search_with_interleaving_and_cp_equals_exhaustive(cp, vpp, a100, gb):
    """Forced cp=2 and vpp=2 (every plan interleaved: the structure bound's interleaved form), then both free."""
    model, cluster, job = SMALL, mixed(a100, 4), JobSpec(global_batch=gb, seq_len=512)
    opts = SpaceOptions(tp=(1, 2), recompute=("none",), zero=(1,), cp=cp, vpp=vpp)
    pruned = search_hetero(model, cluster, job, opts, top_k=3, executor="serial")
    full = search_hetero(model, cluster, job, opts, top_k=3, exhaustive=True, executor="serial")
    assert pruned.indices == full.indices and pruned.plans
    assert [p.iteration_time_s for p in pruned.plans] == [p.iteration_time_s for p in full.plans]
    if len(vpp) == 1:
        assert all(p.plan.vpp == 2 and p.plan.cp == 2 for p in full.plans)


def test_process_executor_gives_the_serial_answer(monkeypatch):
    import paraplan.hetero.search as hs
    monkeypatch.setattr(hs, "LEAD_STRUCTURES", 0)       # send the whole (small) space to the workers
    monkeypatch.setattr(hs, "CHUNK_STRUCTURES", 128)
    model, cluster, job = SMALL, mixed(8, 4), JobSpec(global_batch=32, seq_len=512)
    serial = search_hetero(model, cluster, job, top_k=2, executor="serial")
    parallel = search_hetero(model, cluster, job, top_k=2, executor="process", workers=2)
    assert serial.indices == parallel.indices and parallel.stats.executor == "process"
    assert parallel.stats.workers == 2 and parallel.stats.candidates >= serial.stats.candidates


def test_shared_threshold_prunes_and_is_published():
    # branch_and_bound reads the best k-th time other processes found from `shared` and publishes its own
    import multiprocessing
    from paraplan.hetero import space as hspace
    from paraplan.hetero.estimate import HeteroContext
    from paraplan.hetero.search import branch_and_bound
    model, cluster, job = SMALL, mixed(8, 4), JobSpec(global_batch=32, seq_len=512)
    ctx, opts = HeteroContext(model, cluster, job), SpaceOptions()
    bounds, structs, _ = hspace.build(ctx, opts)
    items = sorted(((i, structs[i], float(bounds[i])) for i in range(len(structs))), key=lambda x: (x[2], x[0]))
    shared = multiprocessing.Value("d", float("inf"))
    best, counts, _ = branch_and_bound(ctx, items, float("inf"), 2, opts, shared=shared)
    assert shared.value == best[-1][0]                           # published: the second best time found
    tight = multiprocessing.Value("d", items[0][2] * 0.5)         # below every structure's bound
    assert branch_and_bound(ctx, items, float("inf"), 2, opts, shared=tight)[0] == []


def test_more_bandwidth_is_never_slower():
    model, job = SMALL, JobSpec(global_batch=16, seq_len=1024)
    times = [search_hetero(model, mixed(4, 4, gbit), job, top_k=1, executor="serial").best.iteration_time_s
             for gbit in (25, 100, 400)]
    assert times[0] >= times[1] >= times[2]


def test_adding_gpus_never_lowers_the_best_throughput():
    model, job = SMALL, JobSpec(global_batch=16, seq_len=1024)
    alone = cluster_from_dict({"name": "a", "node_groups": [{"preset": "dgx-a100", "num_gpus": 4}]})
    one = search_hetero(model, alone, job, top_k=1, executor="serial").best.tokens_per_s
    two = search_hetero(model, mixed(4, 4), job, top_k=1, executor="serial").best.tokens_per_s
    assert two >= one


def test_planner_beats_or_ties_every_baseline():
    model, job = SMALL, JobSpec(global_batch=32, seq_len=1024)
    result = plan_hetero(model, mixed(8, 8), job, executor="serial")
    ratios = result.ratios()
    assert set(ratios) == {"homogeneous_subset", "uniform_split", "metis_like"}
    assert all(r is not None and r >= 1 - 1e-12 for r in ratios.values())


# ---- CLI -----------------------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_hetero_plan_json():
    out = runner.invoke(app, ["hetero-plan", "--model", "debug", "--cluster", "examples/hetero_a100_v100.yaml",
                              "--global-batch", "16", "--seq-len", "512", "--executor", "serial", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["heterogeneous"]["fits_in_memory"] and set(doc["throughput_ratio"]) == {
        "homogeneous_subset", "uniform_split", "metis_like"}


@pytest.mark.parametrize("body,message", [
    ("node_groups:\n  - {gpu: Z100, gpus_per_node: 8, intra_node: {bandwidth_gbps: 100}, "
     "inter_node: {bandwidth_gbps: 10}}\n", "Z100"),
    ("node_groups:\n  - {preset: dgx-a100, inter_node: {bandwidth_gbps: -5}}\n", "must be a positive number"),
])
def test_cli_bad_cluster_files(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    out = runner.invoke(app, ["hetero-plan", "--model", "debug", "--cluster", str(path), "--global-batch", "16",
                              "--seq-len", "512", "--executor", "serial"])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


@pytest.mark.parametrize("args,message", [(["--cp", "1,x"], "--cp must be positive integers"),
                                          (["--vpp", "0"], "--vpp must be positive integers"),
                                          (["--max-replicas", "1"], "--max-replicas must be at least 2")])
def test_cli_bad_search_options(args, message):
    out = runner.invoke(app, ["hetero-plan", "--model", "debug", "--cluster", "examples/hetero_a100_v100.yaml",
                              "--global-batch", "16", "--seq-len", "512", "--executor", "serial"] + args)
    lines = out.output.strip().splitlines()
    assert out.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_homogeneous_plan_command_points_to_hetero_plan():
    out = runner.invoke(app, ["plan", "--model", "debug", "--cluster", "examples/hetero_a100_v100.yaml",
                              "--global-batch", "16", "--seq-len", "512", "--executor", "serial"])
    assert out.exit_code == 2 and "hetero-plan" in out.output


def test_a_faster_link_never_slows_a_fixed_plan():
    model, job = SMALL, JobSpec(global_batch=16, seq_len=1024)
    plan = HeteroPlan((HeteroStage(0, 2, 2, 5), HeteroStage(1, 2, 2, 3)), 4)
    times = [estimate_hetero(model, mixed(4, 4, gbit), job, plan).iteration_time_s for gbit in (10, 100, 1000)]
    assert times[0] > times[1] >= times[2]


def test_mixture_of_experts_stages():
    """MoE layers go through the same per-stage views (expert parallelism stays off in heterogeneous plans)."""
    model = load_model("mixtral-8x7b")
    job = JobSpec(global_batch=64, seq_len=4096)
    cluster = cluster_from_dict({"name": "h100+a100", "node_groups": [{"preset": "dgx-h100", "num_nodes": 2},
                                                                      {"preset": "dgx-a100", "num_nodes": 2}]})
    plan = HeteroPlan((HeteroStage(0, 8, 2, 20, zero=1), HeteroStage(1, 8, 2, 12, zero=1, recompute="full")), 2)
    est = estimate_hetero(model, cluster, job, plan)
    assert est.iteration_time_s > 0 and [s.gpu for s in est.stages] == ["H100-SXM5-80GB", "A100-SXM4-80GB"]


def test_ray_executor_gives_the_serial_answer(monkeypatch):
    pytest.importorskip("ray")
    import paraplan.hetero.search as hs
    monkeypatch.setattr(hs, "LEAD_STRUCTURES", 0)
    monkeypatch.setattr(hs, "CHUNK_STRUCTURES", 128)
    model, cluster, job = SMALL, mixed(8, 4), JobSpec(global_batch=32, seq_len=512)
    opts = SpaceOptions(cp=(1,), vpp=(1,))
    serial = search_hetero(model, cluster, job, opts, top_k=2, executor="serial")
    on_ray = search_hetero(model, cluster, job, opts, top_k=2, executor="ray", workers=2)
    assert serial.indices == on_ray.indices and on_ray.stats.executor == "ray"
    assert on_ray.stats.simulated > serial.stats.simulated
