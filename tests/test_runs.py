"""Measured-runs CSV -> specs: framework defaults filled and reported, bad rows are one-line errors."""
import csv
from pathlib import Path

import pytest

from paraplan.errors import ParaplanError
from paraplan.validate.runs import case_from_row, read_rows
from paraplan.validate.score import predict_rows, row_group
from tests.rows import synthetic_row

DATA = Path(__file__).resolve().parent.parent / "data" / "validation"


def base_row(**changes):
    """The shared Llama-3-8B row with the fields a source may leave empty left empty."""
    return synthetic_row(**{"id": "t1", "vpp": "", "sequence_parallel": "", "recompute": "", "zero": "",
                            "measured_iter_time_s": "10.0", **changes})


def test_empty_fields_take_framework_defaults_and_say_so():
    case = case_from_row(base_row())
    assert case.strategy.sequence_parallel is True          # NeMo turns SP on with TP
    assert case.strategy.zero == 1                           # distributed optimizer
    assert any("sequence_parallel=true" in a for a in case.assumptions)
    assert any("zero=1" in a for a in case.assumptions)
    assert case.model.kv_heads == 8 and case.model.gated_mlp


def test_world_size_mismatch_is_an_error():
    with pytest.raises(ParaplanError, match="num_gpus = 16"):
        case_from_row(base_row(num_gpus="16"))


@pytest.mark.parametrize("column, value, fragment", [
    ("layers", "-4", "must be a positive integer"),
    ("hidden", "abc", "is not an integer"),
    ("framework", "jax-magic", "framework='jax-magic' unknown; allowed: megatron-lm"),
    ("precision", "fp32", "precision='fp32' unknown; allowed: fp16, bf16, fp8"),
    ("recompute", "sometimes", "recompute='sometimes' unknown"),
    ("gpu", "A100-PCIe", "unknown GPU 'A100-PCIe'"),        # 40 and 80 GB both match: ambiguous, not guessed
    ("sequence_parallel", "maybe", "must be true or false"),
])
def test_bad_fields_are_named(column, value, fragment):
    with pytest.raises(ParaplanError, match=fragment):
        case_from_row(base_row(**{column: value}))


@pytest.mark.parametrize("column, given, field, expected, said", [
    ("framework", "NeMo", "framework", "nemo", False),                 # case alone: no note
    ("framework", "Megatron-Core", "framework", "megatron-lm", True),
    ("framework", "megatron-bridge", "framework", "nemo", True),
    ("precision", "BF16", "precision", "bf16", False),
    ("precision", "FP8-CS", "precision", "fp8", True),                 # fp8 recipes: the format has no recipe column
    ("precision", "mxfp8", "precision", "fp8", True),
    ("recompute", "uniform", "recompute", "full", True),               # --recompute-method uniform = full layers
    ("recompute", "Selective", "recompute", "selective", False),
    ("precision", "bfloat16", "precision", "bf16", True),
    ("precision", "NVFP4", "precision", "fp8", True),                 # no fp4 rate: the nearest, fp8
    ("framework", "llm-foundry", "framework", "torchtitan", True),     # eager PyTorch FSDP stack
    ("framework", "paxml", "framework", "maxtext", True),              # JAX/XLA stack
    ("zero", "ZeRO-2", "zero", 2, True),
    ("zero", "zero3", "zero", 3, True),
    ("zero", "FSDP", "zero", 3, True),
    ("zero", "FULL_SHARD", "zero", 3, True),
    ("zero", "distributed optimizer", "zero", 1, True),
    ("zero", "DDP", "zero", 0, True),
    ("zero", "2", "zero", 2, False),
])
def test_other_spellings_of_enumerated_columns_are_read_and_said(column, given, field, expected, said):
    case = case_from_row(base_row(**{column: given}))
    value = {"framework": case.job.framework, "precision": case.job.precision,
             "recompute": case.strategy.recompute, "zero": case.strategy.zero}[field]
    assert value == expected
    assert any(f"given {given!r}" in a for a in case.assumptions) == said


@pytest.mark.parametrize("given, canonical, said", [
    ("A100-80GB-SXM4", "A100-SXM4-80GB", True), ("H100 SXM 80GB", "H100-SXM5-80GB", True),
    ("AMD Instinct MI300X", "MI300X", True),
    ("NVIDIA A100 80GB PCIe", "A100-PCIE-80GB", False),               # an alias of the entry: nothing to say
])
def test_a_gpu_named_by_its_words_in_another_order_is_found_and_said(given, canonical, said):
    case = case_from_row(base_row(gpu=given, intra_node_GBps="300", inter_node_Gbps="200"))
    assert case.cluster.gpu.name == canonical
    assert any(f"read as {canonical}" in a for a in case.assumptions) == said


@pytest.mark.parametrize("dp, expected, said", [
    ("4", 4, None),                                            # tp 8 x cp 2 x dp 4 = 64
    ("8", 4, "counts the cp=2 ranks"),                        # a dp that includes the CP ranks: 8 x 8 = 64
    ("", 4, "num_gpus / (tp*pp*cp)"),                         # empty: what the GPUs leave
])
def test_data_parallel_size_is_read_derived_or_corrected_and_said(dp, expected, said):
    case = case_from_row(base_row(tp="8", pp="1", cp="2", num_gpus="64", dp=dp))
    assert case.strategy.dp == expected
    notes = [a for a in case.assumptions if a.startswith("dp=")]
    assert (notes == []) if said is None else (said in notes[0])


def test_unmodellable_rows_get_an_error_not_a_crash():
    results = predict_rows([base_row(), base_row(id="bad", tp="3", dp="1", num_gpus="3")])
    assert results[0].error is None and results[0].predicted_s > 0
    assert results[1].predicted_s is None and "tp" in results[1].error


def test_missing_columns_are_reported(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("id,layers\nx,2\n")
    with pytest.raises(ParaplanError, match="lacks required columns"):
        read_rows(path)
    with pytest.raises(ParaplanError, match="not found"):
        read_rows(tmp_path / "nope.csv")


def test_every_shipped_row_is_read():
    for name in ("vtrain_a100.csv", "published_runs.csv", "holdout_mbridge_2511.csv"):
        with (DATA / name).open() as fh:
            n = sum(1 for _ in csv.DictReader(fh))
        assert len(read_rows(DATA / name)) == n


def test_row_group_strips_the_row_number():
    assert row_group("vtrain-single-0042") == "vtrain-single"
    assert row_group("narayanan21_t1_03") == "narayanan21"
    assert row_group("dgxc_llama31_8b_bf16_8") == "dgxc"


def test_head_dim_comes_from_a_preset_whose_shape_agrees():
    # Qwen3-30B-A3B: 32 heads of 128 on a 2048-wide model (HF config.json); the format has no head_dim column
    qwen = dict(model="Qwen3_30B_a3B (MoE)", layers="48", hidden="2048", heads="32", kv_heads="4", ffn="",
                vocab="151936", num_experts="128", top_k="8", expert_ffn="768", tp="1", dp="8")
    case = case_from_row(base_row(**qwen))
    assert case.model.head_dim == 128 and case.model.q_dim == 4096
    assert "head_dim=128 (preset qwen3-30b-a3b)" in case.assumptions
    # a column wins; a shape that disagrees with the preset keeps hidden/heads
    assert case_from_row(base_row(**qwen, head_dim="64")).model.head_dim == 64
    assert case_from_row(base_row(**{**qwen, "hidden": "4096"})).model.head_dim == 4096 // 32
    # Llama-3-8B's preset head_dim equals hidden/heads: nothing to say
    assert not any("head_dim" in a for a in case_from_row(base_row()).assumptions)


def test_an_empty_dense_ffn_comes_from_the_preset_or_megatrons_default():
    # the named preset's MLP when its hidden size agrees (Llama 3 8B: 14,336, HF config.json intermediate_size)
    case = case_from_row(base_row(ffn="", model="Llama 3 8B"))
    assert case.model.ffn == 14336 and "ffn=14336 (preset llama3-8b)" in case.assumptions
    # otherwise Megatron-LM arguments.py: SwiGLU int(4h*2/3/64)*64 = int(10922.67/64)*64 = 170*64 = 10880 for h=4096
    case = case_from_row(base_row(ffn="", model="custom"))
    assert case.model.ffn == 10880 and any(a.startswith("ffn=10880 (Megatron-LM default") for a in case.assumptions)
    # GELU MLP: 4h
    assert case_from_row(base_row(ffn="", model="custom", gated_mlp="false")).model.ffn == 4 * 4096


def test_a_tpu_row_without_links_takes_the_slice_preset():
    case = case_from_row(base_row(gpu="TPU v5p", gpus_per_node="4", intra_node_GBps="", inter_node_Gbps="",
                                  framework="maxtext", tp="1", dp="8", zero="3"))
    g = case.cluster.primary
    assert g.gpu.name == "TPU-v5p" and g.gpus_per_node == 4 and g.intra_node.bandwidth_gbps == 600


def test_a_run_beyond_what_we_believe_its_framework_runs_is_modelled_and_said():
    # a measured run evidently ran: torchtitan with the distributed-optimizer stage is priced, not refused
    case = case_from_row(base_row(framework="torchtitan", zero="1"))
    assert not case.job.enforce_framework_limits
    assert "modelled as given although torchtitan offers ZeRO stages 0, 2, 3, not zero=1" in case.assumptions
    assert predict_rows([base_row(framework="torchtitan", zero="1")])[0].predicted_s > 0
    # a run inside the limits keeps them (the search and exports rely on them)
    assert case_from_row(base_row()).job.enforce_framework_limits


def test_an_interleaved_run_whose_micro_batches_are_no_multiple_of_pp_gets_a_group_size():
    # 9 micro-batches on pp=4: groups of 4 would leave 1 < pp; 5 leaves 4 (the smallest group that runs)
    case = case_from_row(base_row(pp="4", dp="1", tp="2", vpp="2", global_batch="9"))
    assert case.strategy.microbatch_group_size == 5
    assert any(a.startswith("microbatch_group_size_per_vp_stage=5") for a in case.assumptions)
    assert predict_rows([base_row(pp="4", dp="1", tp="2", vpp="2", global_batch="9")])[0].predicted_s > 0
    # a multiple of pp keeps Megatron's default
    assert case_from_row(base_row(pp="4", dp="1", tp="2", vpp="2", global_batch="8")).strategy.microbatch_group_size is None


def test_a_job_on_part_of_each_node_fills_nodes_evenly():
    # 256 GPUs on GB200 NVL72 racks (72 GPUs per NVLink domain): 4 racks of 64, the largest divisor of 256 <= 72
    case = case_from_row(base_row(gpu="GB200", num_gpus="256", gpus_per_node="72", tp="4", pp="4", dp="16",
                                  global_batch="256", intra_node_GBps="900"))
    assert case.cluster.gpus_per_node == 64 and case.cluster.node_groups[0].num_nodes == 4
    assert "64 GPUs used per node of 72 (256 GPUs)" in case.assumptions
