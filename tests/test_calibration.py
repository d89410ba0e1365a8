"""Calibration lookup: GPU <- inherited sibling x measured hardware ratio <- framework <- overrides."""
import pytest

from paraplan.cost.calibration import builtin_gemm_table, calibration_for


def test_a_gpu_without_runs_inherits_and_takes_its_own_measured_table():
    h100 = calibration_for("H100-SXM5-80GB", "nemo")
    for gpu in ("B200-SXM-180GB", "GB200", "GB300"):
        cal = calibration_for(gpu, "nemo")
        assert cal.attention_efficiency == h100.attention_efficiency        # inherited unscaled
        assert cal.layer_host_s == h100.layer_host_s                        # the framework's, not the GPU's
        # its own architecture's measured GEMMs, not the H100's it inherits from
        assert cal.gemm_measured == builtin_gemm_table("sm_100") and cal.gemm_reference_gpu == "B200-SXM-180GB"
    assert calibration_for("MI300X", "megatron-lm").gemm_measured == builtin_gemm_table("gfx942")
    assert calibration_for("H200-SXM-141GB", "nemo").gemm_measured == builtin_gemm_table("sm_90")
    assert calibration_for("A100-SXM4-80GB", "megatron-deepspeed").gemm_measured == ()   # no table: analytic
    assert calibration_for("MI355X", "megatron-lm").gemm_measured == builtin_gemm_table("gfx950")
    assert calibration_for("A100-PCIE-40GB", "megatron-lm").gemm_efficiency == \
        calibration_for("A100-SXM4-80GB", "megatron-lm").gemm_efficiency          # same die, inherited


def test_builtin_gemm_table_reads_xla_rows_and_folds_the_batch_into_rows():
    """Values from catalog/measured/xla_matmul.csv (XLA's measured matmul table, sm_90 = H100): a shape only the
    b = 1 grid reaches is its b = 1 entry; 16,384 rows exist only as 4 x 4,096; 2,048 x 4,096 x 4,096 was measured
    as b=1 m=2048, b=2 m=1024 and b=4 m=512 and keeps the geometric mean."""
    rows = {(m, n, k): t for _, m, n, k, t in builtin_gemm_table("sm_90")}
    assert rows[(256, 2048, 4096)] == 296.286
    assert rows[(16384, 4096, 4096)] == 788.699
    assert rows[(2048, 4096, 4096)] == pytest.approx((752.315 * 742.688 * 724.156) ** (1 / 3))
    assert len(rows) == 7 * 5 * 5          # m x b covers 256 ... 16,384; n and k 256 ... 4,096
    # fp8 rows only where credible: sm_100's (none above B200's 4,500 dense fp8 peak, 1.95x bf16 at 4096^3); sm_90's
    # reach 2,593 TFLOP/s, above the H100's 1,979, and gfx942's run at a sixth of its bf16 rate
    assert {p for p, *_ in builtin_gemm_table("sm_100")} == {"bf16", "fp8"}
    assert {p for p, *_ in builtin_gemm_table("sm_90")} == {"bf16"}
    assert {p for p, *_ in builtin_gemm_table("gfx942")} == {"bf16"}


def test_a_profile_replaces_the_builtin_table_and_an_unknown_table_is_refused():
    mine = (("bf16", 4096, 4096, 4096, 500.0),)
    cal = calibration_for("H100-SXM5-80GB", "nemo", overrides={"gemm_measured": mine})
    assert cal.gemm_measured == mine and cal.gemm_reference_gpu == ""   # measured on the GPU it describes
    with pytest.raises(ValueError, match="gemm_table 'sm_75'"):
        calibration_for("X", "other", catalog={"gpus": {"X": {"gemm_table": "sm_75"}}})


def test_scale_applies_to_defaults_when_nothing_is_inherited():
    catalog = {"gpus": {"X": {"scale": {"gemm_efficiency": 0.5}}}}
    assert calibration_for("X", "other", catalog=catalog).gemm_efficiency == pytest.approx(0.80 * 0.5)
    catalog = {"gpus": {"X": {"scale": {"gemm_efficiency": 0.5}, "gemm_efficiency": 0.7}}}
    assert calibration_for("X", "other", catalog=catalog).gemm_efficiency == 0.7   # an explicit value wins
