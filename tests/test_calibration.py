"""Calibration lookup: GPU <- inherited sibling x measured hardware ratio <- framework <- overrides."""
import pytest

from paraplan.cost.calibration import calibration_for


def test_a_gpu_without_runs_inherits_and_scales_by_the_mamf_ratio():
    h100 = calibration_for("H100-SXM5-80GB", "nemo")
    for gpu in ("B200-SXM-180GB", "GB200", "GB300"):
        cal = calibration_for(gpu, "nemo")
        # MAMF over peak, BF16: B200 77.6 %, H100 80.3 % (stas00 ml-engineering, perf_models.md 3.2.2)
        assert cal.gemm_efficiency == pytest.approx(h100.gemm_efficiency * 0.966)
        # FP8 over BF16 MAMF: B200 3432/1745, H100 1402.6/794.5 -> x 1.114
        assert cal.fp8_gemm_speedup == pytest.approx(h100.fp8_gemm_speedup * 1.114)
        assert cal.attention_efficiency == h100.attention_efficiency        # inherited unscaled
        assert cal.layer_host_s == h100.layer_host_s                        # the framework's, not the GPU's
    assert calibration_for("MI300X", "megatron-lm").gemm_efficiency == pytest.approx(h100.gemm_efficiency * 0.64)


def test_scale_applies_to_defaults_when_nothing_is_inherited():
    catalog = {"gpus": {"X": {"scale": {"gemm_efficiency": 0.5}}}}
    assert calibration_for("X", "other", catalog=catalog).gemm_efficiency == pytest.approx(0.80 * 0.5)
    catalog = {"gpus": {"X": {"scale": {"gemm_efficiency": 0.5}, "gemm_efficiency": 0.7}}}
    assert calibration_for("X", "other", catalog=catalog).gemm_efficiency == 0.7   # an explicit value wins
