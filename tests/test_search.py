"""The search: validity rules judged alike one by one and as columns, bounds that never exceed the estimate, and the
pruned search returning exactly what simulating every candidate returns."""
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.cost.calibration import calibration_for
from paraplan.cost import memory
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate, prepare, time_lower_bound
from paraplan.search import parse_knob_values, search
from paraplan.search.bounds import Bounds
from paraplan.search.space import StrategyColumns, build_space
from paraplan.sim.engine import peak_inflight
from paraplan.specs import JobSpec, Strategy
from paraplan.specs.loaders import load_cluster, load_model
from paraplan.specs.strategy import RULES

runner = CliRunner()

# (model, cluster, global batch, sequence) spaces small enough to simulate whole, with dense, GQA, MoE and
# LayerNorm/GeLU models on A100 and H100 nodes
SMALL_CASES = [("debug", "dgx-h100:8", 32, 1024), ("gpt-1.7b", "dgx-a100:8", 64, 2048),
               ("llama3-8b", "dgx-h100:16", 32, 4096), ("mixtral-8x7b", "dgx-h100:32", 32, 4096),
               ("gpt-3.6b", "dgx-a100-40gb:16", 64, 2048), ("llama2-7b", "dgx-v100:16", 32, 2048),
               ("qwen2-7b", "hgx-h200:8", 16, 8192), ("debug", "dgx-a100:4", 8, 512)]
FRAMEWORKS = ("megatron-lm", "torchtitan", "deepspeed", "megatron-deepspeed", "nemo")


def _job(gb, seq, framework="megatron-lm", precision="bf16"):
    return JobSpec(global_batch=gb, seq_len=seq, precision=precision, framework=framework)


def test_vectorised_rules_agree_with_the_scalar_rules():
    rng = random.Random(7)
    model, cluster, job = load_model("mixtral-8x7b"), load_cluster("dgx-h100:16"), _job(48, 4096, "deepspeed")
    strategies = [Strategy(dp=rng.choice([1, 2, 3, 4]), tp=rng.choice([1, 2, 4, 8, 16]), pp=rng.choice([1, 2, 4, 64]),
                           cp=rng.choice([1, 2]), ep=rng.choice([1, 2, 3, 8]), vpp=rng.choice([1, 1, 2, 3]),
                           micro_batch=rng.choice([1, 2, 5]), sequence_parallel=rng.random() < 0.5,
                           zero=rng.choice([0, 1, 2, 3]), recompute="none") for _ in range(400)]
    cols = StrategyColumns({k: np.array([getattr(s, k) for s in strategies])
                            for k in ("dp", "tp", "pp", "cp", "ep", "vpp", "micro_batch", "sequence_parallel", "zero")})
    for rule in RULES:
        together = np.broadcast_to(rule.broken(cols, model, cluster, job), (len(strategies),))
        alone = [bool(rule.broken(s, model, cluster, job)) for s in strategies]
        assert list(together) == alone, rule.name
    assert any(any(np.broadcast_to(r.broken(cols, model, cluster, job), (400,))) for r in RULES)


@pytest.mark.parametrize("framework,strategy,reason", [
    ("deepspeed", Strategy(dp=4, pp=2, zero=2), "only ZeRO stages 0, 1 with pipeline"),
    ("torchtitan", Strategy(dp=8, zero=1), "offers ZeRO stages 0, 2, 3"),
    ("deepspeed", Strategy(dp=4, pp=2, vpp=2, zero=1), "no interleaved"),
    ("megatron-deepspeed", Strategy(dp=4, cp=2), "no context parallelism"),
])
def test_framework_limits_are_rules(framework, strategy, reason):
    with pytest.raises(ParaplanError, match=reason):
        estimate(load_model("gpt-1.7b"), load_cluster("dgx-a100:8"), _job(64, 2048, framework), strategy)


def test_schedule_inflight_equals_the_closed_form_the_memory_bound_uses():
    job = _job(96, 2048)
    for pp in (1, 2, 3, 4, 8):
        for vpp in (1, 2, 3):
            for mbs in (1, 2, 4):
                s = Strategy(dp=1, pp=pp, vpp=vpp, micro_batch=mbs)
                m = s.num_microbatches(job.global_batch)
                if (vpp > 1 and (pp < 2 or m % pp)):
                    continue
                schedule = "interleaved" if vpp > 1 else "1f1b"
                assert peak_inflight(schedule, pp, vpp, m) == memory.closed_form_inflight(job, s)


@pytest.mark.parametrize("case", SMALL_CASES)
def test_bounds_never_exceed_the_estimate(case):
    name, cluster_name, gb, seq = case
    rng = random.Random(hash(case) % 1000)
    for framework, precision in (("megatron-lm", "bf16"), (rng.choice(FRAMEWORKS), rng.choice(["bf16", "fp8"]))):
        model, cluster, job = load_model(name), load_cluster(cluster_name), _job(gb, seq, framework, precision)
        cal = calibration_for(cluster.gpu.name, framework)
        space = build_space(model, cluster, job)
        bounds = Bounds(model, cluster, job, cal, space.candidates)
        for i in rng.sample(range(len(space.candidates)), min(40, len(space.candidates))):
            s = space.candidates.strategy(i, framework, precision)
            prep = prepare(model, cluster, job, s, cal)
            plan = estimate(model, cluster, job, s, cal)
            assert bounds.memory_gib[i] <= plan.memory.total_gib * (1 + 1e-9), s.describe()
            if np.isfinite(bounds.time_s[i]):
                assert bounds.time_s[i] <= plan.iteration_time_s * (1 + 1e-9), s.describe()
            assert time_lower_bound(prep) <= plan.iteration_time_s * (1 + 1e-9), s.describe()


def test_even_1f1b_bound_is_the_textbook_formula():
    # (m + pp - 1)(t_f + t_b) for an even pipeline without sends: the chain bound is exact there
    model, cluster, job = load_model("gpt-1.7b"), load_cluster("dgx-a100:8"), _job(64, 2048, "torchtitan")
    s = Strategy(dp=2, pp=4, micro_batch=1, zero=0, sequence_parallel=True)
    prep = prepare(model, cluster, job, s)
    prep.p2p_s = 0.0
    prep.forward_s = [[1.0]] * 4
    prep.backward_s = [[2.0]] * 4
    prep.dp_exposed = [0.0] * 4
    prep.optimizer_s = [0.0] * 4
    assert time_lower_bound(prep) == pytest.approx((32 + 4 - 1) * 3.0 + prep.calibration.iteration_overhead_s)


def _random_case(rng):
    """A random small case: the exhaustive search simulates every valid candidate, so each space is cut to a few
    dozen by random --allow restrictions (which the pruned search must respect too)."""
    name, cluster_name, gb, seq = rng.choice(SMALL_CASES[:3] + SMALL_CASES[4:])
    framework = rng.choice(FRAMEWORKS)
    allow = [f"micro_batch={rng.choice([1, 2])}",
             f"recompute={','.join(rng.sample(['none', 'selective', 'full'], rng.randint(1, 2)))}",
             f"zero={','.join(map(str, rng.sample([0, 1, 2, 3], 2)))}",
             f"vpp={rng.choice(['1', '1,2'])}", f"cp={rng.choice(['1', '1,2'])}"]
    if rng.random() < 0.5:
        allow.append(f"tp={rng.choice(['1,2', '2,4', '4,8', '1,8'])}")
    gb = rng.choice([gb // 2, gb, gb * 2])
    headroom = rng.choice([0.0, 0.5, 0.8])          # tight memory makes the memory bound and OOM paths matter
    job = JobSpec(global_batch=gb, seq_len=seq, framework=framework, memory_headroom=headroom,
                  precision=rng.choice(["bf16", "bf16", "fp8"]))
    return load_model(name), load_cluster(cluster_name), job, parse_knob_values(allow=allow)


def _ranking(result):
    return [(p.strategy, p.iteration_time_s) for p in result.plans]


def test_pruned_search_equals_exhaustive_search_on_200_random_cases():
    rng = random.Random(2026)
    checked = nonempty = 0
    while checked < 200:
        model, cluster, job, allowed = _random_case(rng)
        pruned = search(model, cluster, job, allowed, top_k=3, executor="serial")
        full = search(model, cluster, job, allowed, top_k=3, executor="serial", exhaustive=True)
        assert _ranking(pruned) == _ranking(full), (model.name, cluster.num_gpus, job, allowed)
        assert pruned.stats.simulated <= full.stats.simulated
        checked += 1
        nonempty += bool(full.plans)
    assert nonempty >= 100          # most cases have plans to compare, not just "nothing fits"


def test_results_do_not_depend_on_the_executor():
    model, cluster, job = load_model("llama3-8b"), load_cluster("dgx-h100:16"), _job(64, 4096)
    allowed = parse_knob_values(allow=["micro_batch=1,2", "zero=0,1", "recompute=none,selective", "cp=1", "vpp=1"])
    serial = search(model, cluster, job, allowed, top_k=5, executor="serial", exhaustive=True)
    pooled = search(model, cluster, job, allowed, top_k=5, executor="process", workers=2, exhaustive=True)
    assert _ranking(serial) == _ranking(pooled)
    assert pooled.stats.workers == 2


def test_ray_executor_gives_the_same_plans():
    pytest.importorskip("ray")
    model, cluster, job = load_model("gpt-1.7b"), load_cluster("dgx-a100:8"), _job(64, 2048)
    allowed = parse_knob_values(allow=["micro_batch=1,2", "zero=0,1", "recompute=none"])
    serial = search(model, cluster, job, allowed, top_k=3, executor="serial", exhaustive=True)
    on_ray = search(model, cluster, job, allowed, top_k=3, executor="ray", workers=2, exhaustive=True)
    assert _ranking(serial) == _ranking(on_ray)


def test_fixed_knobs_are_respected_and_the_large_space_is_mostly_pruned():
    model, cluster, job = load_model("llama3-70b"), load_cluster("dgx-h100:64"), _job(256, 8192)
    result = search(model, cluster, job, parse_knob_values(fix=["tp=8"], allow=["recompute=none,selective"]),
                    executor="serial")
    assert result.plans and all(p.strategy.tp == 8 and p.strategy.recompute != "full" for p in result.plans)
    assert result.stats.pruned_fraction > 0.99
    times = [p.iteration_time_s for p in result.plans]
    assert times == sorted(times)


@pytest.mark.parametrize("fix,allow,message", [
    (["tp=8", "tp=4"], [], "contradictory constraints on tp"),
    (["tq=8"], [], "unknown knob 'tq'"),
    (["tp=8,4"], [], "takes one value"),
    ([], ["zero=5"], "zero takes 0, 1, 2 or 3"),
    ([], ["recompute=some"], "recompute takes none, selective, full"),
    ([], ["tp"], "is not KNOB=VALUE"),
])
def test_bad_knob_constraints_are_one_line_errors(fix, allow, message):
    with pytest.raises(ParaplanError, match=message):
        parse_knob_values(fix, allow)


def test_nothing_fits_names_the_shortfall_and_remedies():
    model, cluster, job = load_model("llama3-70b"), load_cluster("dgx-h100:8"), _job(64, 8192)
    result = search(model, cluster, job, parse_knob_values(fix=["recompute=none"]), executor="serial")
    assert not result.plans
    assert "no plan fits in memory" in result.nothing_fits and "GiB more than" in result.nothing_fits
    assert "allow recompute=full" in result.nothing_fits and "more GPUs" in result.nothing_fits


def test_cli_plan_json_why_and_errors():
    args = ["plan", "--model", "gpt-1.7b", "--cluster", "dgx-a100:8", "--global-batch", "64", "--seq-len", "2048",
            "--executor", "serial", "--top", "3"]
    out = runner.invoke(app, args + ["--json", "--why", "tp=2,pp=1,dp=4,mbs=1"])
    assert out.exit_code == 0, out.output
    import json
    doc = json.loads(out.output)
    assert len(doc["top"]) == 3 and doc["best"]["iteration_time_s"] <= doc["top"][1]["iteration_time_s"]
    assert doc["stats"]["space_size"] >= doc["stats"]["valid"] > doc["stats"]["simulated"] > 0
    assert "tp=2" in doc["why"]
    bad = runner.invoke(app, args + ["--fix", "tp=3"])
    assert bad.exit_code != 0
    nothing = runner.invoke(app, ["plan", "--model", "llama3-70b", "--cluster", "dgx-h100:8", "--global-batch", "64",
                                  "--seq-len", "8192", "--fix", "recompute=none", "--executor", "serial"])
    assert nothing.exit_code == 3 and "no plan fits" in nothing.output


def test_cli_plan_exports_and_reports_the_best_plan(tmp_path):
    args = ["plan", "--model", "gpt-1.7b", "--cluster", "dgx-a100:8", "--global-batch", "64", "--seq-len", "2048",
            "--executor", "serial", "--top", "2", "--export", "deepspeed", "--out", str(tmp_path / "ds"),
            "--report", str(tmp_path / "report.html")]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert (tmp_path / "ds").is_dir() and any((tmp_path / "ds").iterdir())
    assert "<svg" in (tmp_path / "report.html").read_text()



def test_megatron_zero2_under_accumulation_is_zero1():
    # Megatron accumulates gradients unsharded (no_sync) and reduce-scatters once, so with several micro-batches its
    # ZeRO-2 is ZeRO-1 and the space keeps only ZeRO-1; FSDP engines shard through accumulation and keep both
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", 16)
    for framework, kept in (("megatron-lm", False), ("torchtitan", True)):
        space = build_space(model, cluster, JobSpec(256, 4096, "bf16", framework))
        cand = space.candidates
        accumulating = cand.num_microbatches(256) > 1
        assert bool(((cand.zero == 2) & accumulating).any()) is kept
        assert ((cand.zero == 2) & ~accumulating).any()              # one micro-batch: sharding pays either way
    only_zero2 = build_space(model, cluster, JobSpec(256, 4096, "bf16", "megatron-lm"), {"zero": (2,)})
    assert len(only_zero2.candidates) > 0                            # kept when ZeRO-1 is not in the space
