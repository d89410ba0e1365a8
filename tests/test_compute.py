"""Compute cost model: FLOP counts against the papers' closed forms, GEMM efficiency shape effects."""
import math

import pytest

from paraplan.cost.calibration import Calibration
from paraplan.cost.compute import gemm_time, layer_ops, mem_time
from paraplan.cost.compute import model_flops_per_iteration
from paraplan.specs import GPUSpec, JobSpec, ModelSpec, MoESpec, Strategy

A100 = GPUSpec("A100-test", {"bf16": 312.0, "fp16": 312.0}, 80.0, 2039.0, sm_count=108)
GPT = ModelSpec("gpt-test", layers=4, hidden=4096, heads=32, ffn=16384, vocab=51200, linear_bias=False)


def test_dense_layer_gemm_flops_match_narayanan():
    # Narayanan et al. 2021 (SC'21) sec. 5.1: a GPT layer's forward GEMMs are 24*b*s*h^2 FLOPs
    # (QKV 6bsh^2 + attention output 2bsh^2 + MLP 16bsh^2); scores and context add 4*b*s^2*h.
    b, s, h = 2, 2048, 4096
    ops = layer_ops(GPT, JobSpec(8, s), Strategy(micro_batch=b), flash_attention=False)
    gemm = sum(op.flops for op in ops if op.name in ("qkv_proj", "out_proj", "mlp_up", "mlp_down"))
    attn = sum(op.flops for op in ops if op.name in ("attn_scores", "attn_context"))
    assert gemm == 24 * b * s * h ** 2
    assert attn == 4 * b * s * s * h


def test_flash_attention_counts_half_the_causal_scores():
    b, s, h = 1, 4096, 4096
    ops = layer_ops(GPT, JobSpec(8, s), Strategy(micro_batch=b), flash_attention=True)
    (flash,) = [op for op in ops if op.kind == "attn"]
    assert flash.flops == 0.5 * 4 * b * s * s * h    # block skipping above the causal diagonal


def test_tensor_parallel_divides_layer_flops():
    job = JobSpec(8, 2048)
    one = sum(op.flops for op in layer_ops(GPT, job, Strategy()))
    eight = sum(op.flops for op in layer_ops(GPT, job, Strategy(tp=8)))
    assert eight == pytest.approx(one / 8)


def test_model_flops_formula_matches_korthikanti():
    # Korthikanti et al. 2022, eq. for model FLOPs: 72*B*s*l*h^2*(1 + s/(6h) + V/(12*l*h)) for ffn = 4h, MHA.
    # Ours counts parameters exactly (norm weights add 2h per layer), so agree to 0.01 %.
    B, s, l, h, V = 512, 2048, GPT.layers, GPT.hidden, GPT.vocab
    expected = 72 * B * s * l * h ** 2 * (1 + s / (6 * h) + V / (12 * l * h))
    assert model_flops_per_iteration(GPT, JobSpec(B, s)) == pytest.approx(expected, rel=1e-4)


def test_gemm_large_square_reaches_calibrated_efficiency():
    cal = Calibration(gemm_efficiency=0.85, gemm_k_half=0.0)
    n = 108 * 256                     # 256x128 tiles: 108 x 216 tiles = 216 whole waves on 108 SMs, no loss
    t = gemm_time(n, n, n, A100, cal, "bf16")
    assert 2 * n ** 3 / t / 312e12 == pytest.approx(0.85, rel=1e-9)


def test_tile_quantisation_makes_partial_tiles_waste_work():
    # 129 rows need a second row of tiles that is almost empty: per useful FLOP it is slower than 128 or 256 rows
    # (NVIDIA matmul performance guide, tile quantisation).
    cal = Calibration(kernel_floor_s=0.0)
    per_row = {m: gemm_time(m, 8192, 8192, A100, cal, "bf16") / m for m in (128, 129, 256)}
    assert per_row[129] > 1.3 * per_row[256]
    assert per_row[129] > per_row[128]


def test_tile_choice_never_worse_than_the_largest_tile_alone():
    from paraplan.cost.compute import tile_efficiency
    for m, n in ((2048, 1536), (1024, 768), (8192, 12288), (77, 4096)):
        tiles = -(-m // 256) * -(-n // 128)
        single = (m * n) / (tiles * 256 * 128) * tiles / (-(-tiles // 108) * 108)
        assert tile_efficiency(m, n, 1, 108) >= single


def test_small_gemm_hits_kernel_floor():
    cal = Calibration(kernel_floor_s=7e-6)
    assert gemm_time(16, 16, 16, A100, cal, "bf16") == 7e-6
    assert mem_time(10, A100, cal) == 7e-6


def test_memory_bound_time_is_bytes_over_bandwidth():
    cal = Calibration(memory_efficiency=0.8)
    nbytes = 1e9
    assert mem_time(nbytes, A100, cal) == pytest.approx(nbytes / (2039e9 * 0.8))


def test_gemm_time_monotone_in_each_dimension():
    cal = Calibration()
    base = gemm_time(4096, 4096, 4096, A100, cal, "bf16")
    for m, n, k in ((8192, 4096, 4096), (4096, 8192, 4096), (4096, 4096, 8192)):
        assert gemm_time(m, n, k, A100, cal, "bf16") >= base
    assert math.isfinite(base)


def test_megatron_fused_softmax_availability_rule():
    # Megatron fused_softmax.py FusedScaleMaskSoftmax.is_kernel_available (causal): 16 < s_k <= 4096, s_q and s_k
    # multiples of 4, b * heads a multiple of 4 (and of 8 when s_k <= 128)
    from paraplan.cost.compute import megatron_fused_softmax_available as ok
    assert ok(1, 16, 1024, 1024)
    assert not ok(1, 2, 1024, 1024)        # tp=8 of 16 heads at micro-batch 1: 2 attention batches
    assert ok(2, 2, 1024, 1024)
    assert not ok(1, 16, 8192, 8192)       # longer than the kernel supports
    assert not ok(1, 4, 128, 128) and ok(2, 4, 128, 128)


def test_unfused_softmax_fallback_costs_more_kernels():
    from paraplan.cost.compute import layer_ops
    job = JobSpec(8, 1024, "fp16", "megatron-deepspeed")
    small = ModelSpec("t", layers=2, hidden=1024, heads=16, ffn=4096, vocab=1000)
    fused = [op.name for op in layer_ops(small, job, Strategy(tp=1))]
    fallback = [op.name for op in layer_ops(small, job, Strategy(tp=8))]
    assert "softmax_mask" not in fused and "softmax_mask" in fallback


def test_host_launch_time_grows_with_the_kernels_a_layer_runs():
    # host time = layer_host_s x ops / standard ops: the unfused softmax runs 5 operators (cast, scale, mask,
    # softmax, cast back) where the fused kernel is 1, so a layer of N standard ops launches N + 4
    from paraplan.cost.compute import host_kernel_factor, layer_times
    job = JobSpec(8, 1024, "fp16", "megatron-deepspeed")
    small = ModelSpec("t", layers=2, hidden=1024, heads=16, ffn=4096, vocab=1000)
    fused = layer_ops(small, job, Strategy(tp=1))
    fallback = layer_ops(small, job, Strategy(tp=8))
    assert host_kernel_factor(fused) == 1.0
    assert len(fallback) == len(fused) + 4
    assert host_kernel_factor(fallback) == pytest.approx(len(fallback) / len(fused))
    cal = Calibration(layer_host_s=1e-3, backward_host_ratio=2.0)
    lt = layer_times(small, job, Strategy(tp=8), A100, cal)
    assert lt.compute.host_forward_s == pytest.approx(1e-3 * len(fallback) / len(fused))
    assert lt.compute.host_backward_s == pytest.approx(2 * lt.compute.host_forward_s)
    assert lt.recompute_host_s["full"] == lt.compute.host_forward_s
    # a MoE block adds its router and token permutation to the dense block's operators
    moe = ModelSpec("m", layers=2, hidden=1024, heads=16, ffn=4096, vocab=1000,
                    moe=MoESpec(num_experts=8, top_k=2, expert_ffn=1024))
    bf16 = JobSpec(8, 1024, "bf16", "megatron-lm")
    moe_ops = layer_ops(moe, bf16, Strategy(tp=1), moe_layer=True)
    dense_ops = layer_ops(moe, bf16, Strategy(tp=1), moe_layer=False)
    assert len(moe_ops) == len(dense_ops) + 2
    assert host_kernel_factor(moe_ops) == pytest.approx(len(moe_ops) / (len(moe_ops) - 2))

def test_gemm_time_on_a_measured_shape_is_the_measured_rate_scaled_to_the_part():
    """XLA's sm_90 table measures 256 x 2048 x 4096 at 296.286 TFLOP/s and sm_100 at 394.106 (catalog/measured/
    xla_matmul.csv, b = 1). The table's own part runs at that rate; a power-capped H100 at clock_scale 0.92 of it;
    a GB200 at 2,500/2,250 of the HGX B200's (its 1,200 W dense BF16 peak over the 1,000 W part's)."""
    from paraplan.cost.calibration import calibration_for
    from paraplan.specs.loaders import load_gpu

    def rate(gpu_name):
        gpu = load_gpu(gpu_name)
        cal = calibration_for(gpu.name, "nemo").with_(kernel_floor_s=0.0)
        return 2 * 256 * 2048 * 4096 / gemm_time(256, 2048, 4096, gpu, cal, "bf16") / 1e12

    assert rate("H100-SXM5-80GB") == pytest.approx(296.286, rel=1e-9)
    assert rate("H100-96GB-HBM2e") == pytest.approx(296.286 * 0.92, rel=1e-9)
    assert rate("B200-SXM-180GB") == pytest.approx(394.106, rel=1e-9)
    assert rate("GB200") == pytest.approx(394.106 * 2500 / 2250, rel=1e-9)
    assert rate("H100-PCIe-80GB") == pytest.approx(296.286 * 756.5 / 989.4, rel=1e-9)   # its dense BF16 peak


def test_flash_attention_narrow_heads_run_slower_as_measured():
    """FlashAttention-3 paper (arXiv 2407.08608) Fig. 5, H100 BF16 forward, no causal mask, 8k, head dim 64 against
    128: cuDNN 412 against 600 TFLOP/s, FlashAttention-2 322 against 370. The factor d/(d+half) normalised at 128 with
    half = 100 gives (64/164)/(128/228) = 0.695, with half = 22 (64/86)/(128/150) = 0.872; wider heads get no credit."""
    from paraplan.cost.compute import attention_head_dim_factor, flash_attention_time
    assert attention_head_dim_factor(64, 100.0) == pytest.approx(412 / 600, rel=0.02)
    assert attention_head_dim_factor(64, 22.0) == pytest.approx(322 / 370, rel=0.01)
    assert attention_head_dim_factor(128, 100.0) == 1.0 and attention_head_dim_factor(256, 100.0) == 1.0
    assert attention_head_dim_factor(64, 0.0) == 1.0
    cal = Calibration(kernel_floor_s=0.0, attention_head_dim_half=100.0)
    narrow = flash_attention_time(1e12, 8192, A100, cal, False, head_dim=64)
    assert narrow == pytest.approx(flash_attention_time(1e12, 8192, A100, cal, False) / (412 / 600), rel=0.02)


def test_fp8_linear_layers_pay_their_casts_and_the_rest_stays_bf16():
    """A linear layer in fp8 casts its input (forward) or output gradient (backward) first: read bf16 2 B, write the
    fp8 copy and its transpose 1 + 1 B per element (TE cast-transpose), memory-bound. The router and the LM head run
    in bf16 (not Transformer Engine modules)."""
    from paraplan.cost.compute import Op, op_time
    cal = Calibration(kernel_floor_s=0.0)
    m, n, k = 8192, 12288, 4096
    linear, router = Op("qkv_proj", "gemm", m=m, n=n, k=k), Op("router", "gemm", m=m, n=n, k=k)
    fwd_cast, bwd_cast = mem_time(m * k * 4, A100, cal), mem_time(m * n * 4, A100, cal)
    assert op_time(linear, A100, cal, "fp8", False) == pytest.approx(gemm_time(m, n, k, A100, cal, "fp8") + fwd_cast)
    bwd = gemm_time(m, k, n, A100, cal, "fp8") + gemm_time(k, n, m, A100, cal, "fp8")
    assert op_time(linear, A100, cal, "fp8", True) == pytest.approx(bwd + bwd_cast)
    assert op_time(router, A100, cal, "fp8", False) == op_time(router, A100, cal, "bf16", False)
    assert op_time(linear, A100, cal, "bf16", False) == gemm_time(m, n, k, A100, cal, "bf16")   # no cast in bf16


def test_lm_head_stays_bf16_under_fp8_in_megatron_but_not_in_torchtitan():
    """Megatron's output layer is a ColumnParallelLinear outside Transformer Engine: bf16 even in fp8 runs.
    torchtitan's float8 converter filters no module by default (filter_fqns = []), so its output layer is fp8."""
    from paraplan.cost.compute import head_time
    cal = Calibration(kernel_floor_s=0.0)
    model = ModelSpec("m", layers=2, hidden=4096, heads=32, ffn=14336, vocab=128256)
    s = Strategy()
    for framework, same in (("megatron-lm", True), ("nemo", True), ("torchtitan", False)):
        fp8 = head_time(model, JobSpec(8, 4096, "fp8", framework), s, A100, cal)
        bf16 = head_time(model, JobSpec(8, 4096, "bf16", framework), s, A100, cal)
        assert (fp8 == bf16) == same
