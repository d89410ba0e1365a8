"""Exporters: golden files for a few presets, each engine's refusal rules (one line naming the rule), the batch
identities the files state, and `paraplan export` on the command line. The engines' own validation of every preset's
export is in tests/test_export_engines.py."""
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.errors import ParaplanError
from paraplan.export import FORMATS, export_plan, write_export
from paraplan.export import deepspeed as ds, megatron as mg, torchtitan as tt
from paraplan.export.common import ExportRefused, broken_rules
from paraplan.specs import JobSpec
from paraplan.specs.loaders import load_cluster
from tests.export_cases import deepspeed_strategy, megatron_case, torchtitan_strategy

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "export"
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
# (golden name, preset, engine, adapt strategy)
GOLDEN_CASES = [
    ("llama3-70b_megatron", "llama3-70b", "megatron", None),
    ("llama3-405b_megatron", "llama3-405b", "megatron", None),
    ("mixtral-8x7b_megatron", "mixtral-8x7b", "megatron", None),
    ("deepseek-v3_megatron", "deepseek-v3", "megatron", None),
    ("llama3-70b_torchtitan", "llama3-70b", "torchtitan", torchtitan_strategy),
    ("llama3-405b_torchtitan", "llama3-405b", "torchtitan", torchtitan_strategy),
    ("llama2-7b_torchtitan", "llama2-7b", "torchtitan", torchtitan_strategy),
    ("llama3-8b_deepspeed", "llama3-8b", "deepspeed", deepspeed_strategy),
    ("gpt3-175b_deepspeed", "gpt3-175b", "deepspeed", deepspeed_strategy),
]


def _export(preset, engine, adapt=None):
    s, m, c, job = megatron_case(preset)
    return export_plan(adapt(s) if adapt else s, m, c, job, engine)


@pytest.mark.parametrize("golden,preset,engine,adapt", GOLDEN_CASES, ids=[g[0] for g in GOLDEN_CASES])
def test_export_matches_golden_files(golden, preset, engine, adapt):
    """Set PARAPLAN_UPDATE_GOLDEN=1 to rewrite the files after a deliberate change (and review the diff)."""
    e = _export(preset, engine, adapt)
    doc = {"launch": e.launch, "notes": e.notes, "engine_version": e.engine_version}
    folder = GOLDEN / golden
    if os.environ.get("PARAPLAN_UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in e.files.items():
            (folder / name).write_text(text)
        (folder / "launch.json").write_text(json.dumps(doc, indent=1) + "\n")
    for name, text in e.files.items():
        assert (folder / name).read_text() == text, f"{golden}/{name} differs from the golden file"
    assert json.loads((folder / "launch.json").read_text()) == doc
    assert sorted(p.name for p in folder.iterdir()) == sorted([*e.files, "launch.json"])


# ---- Megatron-LM -------------------------------------------------------------------------------------------------
def _flags(preset="llama3-70b", **changes):
    s, m, c, job = megatron_case(preset)
    return dict(mg.megatron_args(s.with_(**changes), m, c, job))


def test_megatron_flags_carry_the_plan_and_the_model_shape():
    f = _flags()
    assert f["--tensor-model-parallel-size"] == 8 and f["--pipeline-model-parallel-size"] == 2
    assert f["--num-layers-per-virtual-pipeline-stage"] == 8          # 80 layers / (pp 2 * vpp 5)
    assert f["--num-query-groups"] == 8 and "--group-query-attention" in f
    assert {"--swiglu", "--sequence-parallel", "--use-distributed-optimizer", "--overlap-grad-reduce",
            "--overlap-param-gather", "--recompute-activations", "--untie-embeddings-and-output-weights",
            "--disable-bias-linear"} <= set(f)
    assert f["--normalization"] == "RMSNorm" and f["--global-batch-size"] == 256
    assert f["--max-position-embeddings"] >= f["--seq-length"]
    assert all(flag in mg.FLAG_FIELDS for flag in f), set(f) - set(mg.FLAG_FIELDS)


def test_megatron_uneven_stages():
    f = _flags("llama3-405b")     # 126 layers on 8 stages: Megatron's embedding/loss-aware split 15, 16x6, 15
    assert "--account-for-embedding-in-pipeline-split" in f and "--account-for-loss-in-pipeline-split" in f
    f = _flags("llama3-70b", vpp=1, layers_per_stage=(38, 42))
    assert f["--decoder-first-pipeline-num-layers"] == 38 and f["--decoder-last-pipeline-num-layers"] == 42
    f = _flags("llama3-70b", vpp=2, layers_per_stage=(19, 21, 20, 20))
    assert f["--pipeline-model-parallel-layout"] == "Et*19|t*21|t*20|t*20L"


def test_megatron_moe_mla_and_gpt_flags():
    f = _flags("deepseek-v3")
    assert f["--moe-layer-freq"] == "([0]*3+[1]*58)" and f["--num-experts"] == 256 and f["--moe-router-topk"] == 8
    assert f["--moe-shared-expert-intermediate-size"] == 2048 and "--multi-latent-attention" in f
    assert f["--kv-lora-rank"] == 512 and f["--qk-pos-emb-head-dim"] == 64
    f = _flags("gpt3-175b")
    assert "--position-embedding-type" not in f and "--swiglu" not in f and "--untie-embeddings-and-output-weights" not in f
    f = _flags("nemotron4-15b")
    assert "--squared-relu" in f


def test_megatron_zero_stages_and_precision():
    assert "--use-distributed-optimizer" not in _flags(zero=0)
    assert "--overlap-param-gather" not in _flags(zero=0)
    f = _flags(zero=3)
    assert f["--data-parallel-sharding-strategy"] == "optim_grads_params" and "--use-megatron-fsdp" in f
    s, m, c, _ = megatron_case("llama3-8b")
    f = dict(mg.megatron_args(s, m, c, JobSpec(global_batch=128, seq_len=8192, precision="fp8")))
    assert f["--fp8-format"] == "hybrid" and "--bf16" in f


def test_megatron_script_is_a_runnable_torchrun_command():
    e = _export("llama3-70b", "megatron")
    script = e.files[mg.SCRIPT]
    assert script.startswith("#!/usr/bin/env bash") and "torchrun" in script and "pretrain_gpt.py" in script
    assert "--nproc_per_node 8 --nnodes 8" in script and "CUDA_DEVICE_MAX_CONNECTIONS=1" in script
    assert mg.SCRIPT in e.launch


# ---- refusals ------------------------------------------------------------------------------------------------------
REFUSALS = [
    # (engine, preset, strategy changes, rule)
    ("deepspeed", "llama3-8b", dict(tp=1, pp=2, dp=4, zero=3, sequence_parallel=False, recompute="full"),
     "pp_needs_zero_at_most_1"),
    ("deepspeed", "llama3-8b", dict(tp=1, pp=2, dp=4, zero=2, sequence_parallel=False, recompute="none"),
     "pp_needs_zero_at_most_1"),
    ("deepspeed", "llama3-8b", dict(tp=2, cp=2, dp=2, sequence_parallel=False, recompute="none"), "no_context_parallel"),
    ("deepspeed", "llama3-70b", dict(sequence_parallel=False, recompute="none"), "no_interleaved_pipeline"),
    ("deepspeed", "llama3-8b", dict(), "no_megatron_sequence_parallel"),
    ("deepspeed", "llama3-8b", dict(sequence_parallel=False), "no_selective_recompute"),
    ("megatron", "llama3-8b", dict(tp=1, pp=2, dp=4, sequence_parallel=False, schedule="gpipe"), "schedule_is_1f1b"),
    ("megatron", "llama3-8b", dict(sequence_parallel=False, tp_comm_overlap=True), "tp_comm_overlap_needs_sp"),
    ("torchtitan", "llama3-8b", dict(zero=1), "zero_is_ddp_or_fsdp"),
    ("torchtitan", "gpt3-175b", dict(zero=3), "model_has_flavor"),
    ("torchtitan", "qwen2-7b", dict(zero=3), "model_has_flavor"),        # q/k/v biases
]


@pytest.mark.parametrize("engine,preset,changes,rule", REFUSALS, ids=[f"{r[0]}-{r[3]}" for r in REFUSALS])
def test_engine_refuses_what_it_cannot_run_naming_the_rule(engine, preset, changes, rule):
    s, m, c, job = megatron_case(preset)
    s = s.with_(**changes)
    with pytest.raises(ExportRefused) as info:
        export_plan(s, m, c, job, engine)
    message = str(info.value)
    assert "\n" not in message and f"rule {rule}:" in message and message.startswith(engine)
    module = {"megatron": mg, "deepspeed": ds, "torchtitan": tt}[engine]
    assert rule in broken_rules(module.RULES, s, m, c, job)


def test_torchtitan_refuses_fp16():
    s, m, c, _ = megatron_case("llama3-8b")
    with pytest.raises(ExportRefused, match="rule precision_bf16"):
        export_plan(s.with_(zero=3), m, c, JobSpec(global_batch=128, seq_len=8192, precision="fp16"), "torchtitan")


def test_invalid_strategy_and_unknown_format_are_paraplan_errors():
    s, m, c, job = megatron_case("llama3-8b")
    with pytest.raises(ParaplanError, match="unknown export format"):
        export_plan(s, m, c, job, "jax")
    with pytest.raises(ParaplanError, match="heads"):
        export_plan(s.with_(tp=3, dp=1), m, load_cluster("dgx-h100", 3), job, "megatron")


# ---- batch identities ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["llama3-8b", "gpt3-175b", "mixtral-8x7b", "deepseek-v3"])
def test_deepspeed_batch_identity_uses_the_data_parallel_size(preset):
    s, m, c, job = megatron_case(preset)
    s = deepspeed_strategy(s)
    cfg = json.loads(export_plan(s, m, c, job, "deepspeed").files[ds.CONFIG])
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * s.dp
    assert cfg["zero_optimization"]["stage"] == s.zero
    assert ("pipeline" in cfg) == (s.pp > 1)


@pytest.mark.parametrize("preset", ["llama3-8b", "llama3-70b", "llama3-405b", "deepseek-v3"])
def test_torchtitan_batch_and_degrees(preset):
    s, m, c, job = megatron_case(preset)
    s = torchtitan_strategy(s)
    v = tt.job_values(s, m, job)
    par, tr = v["parallelism"], v["training"]
    world = par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"] * s.cp * s.tp * s.pp
    assert world == s.world_size
    dp = par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"]
    accumulation = tr["global_batch_size"] // (tr["local_batch_size"] * dp)
    per_step = tr["local_batch_size"] // (par.get("pipeline_parallel_microbatch_size") or tr["local_batch_size"])
    assert accumulation * per_step == s.num_microbatches(job.global_batch)
    if s.pp > 1:
        parts = par["module_fqns_per_model_part"]
        assert len(parts) == s.pp * s.vpp and parts[0][0] == "tok_embeddings" and parts[-1][-2:] == ["norm", "lm_head"]


# ---- files and CLI -----------------------------------------------------------------------------------------------
def test_write_export(tmp_path):
    e = _export("llama3-8b", "megatron")
    paths = write_export(e, tmp_path / "out")
    assert [p.name for p in paths] == [mg.SCRIPT] and os.access(paths[0], os.X_OK)


CLI = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--global-batch", "128", "--seq-len", "8192"]


def test_cli_export_writes_files_and_prints_launch(tmp_path):
    r = runner.invoke(app, ["export", "--format", "megatron", *CLI, "--strategy", "tp=2,dp=4,mbs=1",
                            "--out", str(tmp_path)])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / mg.SCRIPT).is_file() and "launch:" in r.stdout
    r = runner.invoke(app, ["export", "--format", "deepspeed", *CLI, "--strategy", "tp=1,dp=8,mbs=1",
                            "--framework", "deepspeed", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {"files", "launch", "notes", "engine"} and ds.CONFIG in doc["files"]


@pytest.mark.parametrize("args,needle", [
    (["--format", "deepspeed", "--strategy", "tp=1,pp=2,dp=4,mbs=1,zero=3,recompute=full,sp=false"],
     "rule pp_needs_zero_at_most_1"),
    (["--format", "jax", "--strategy", "dp=8"], "--format must be one of"),
    (["--format", "torchtitan", "--strategy", "tp=2,dp=4,zero=1"], "rule zero_is_ddp_or_fsdp"),
])
def test_cli_export_refusal_is_one_line(args, needle):
    r = runner.invoke(app, ["export", *CLI, *args])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_formats():
    assert FORMATS == ("megatron", "torchtitan", "deepspeed")
    assert re.match(r"^torchtitan 0\.3", tt.ENGINE_VERSION)
