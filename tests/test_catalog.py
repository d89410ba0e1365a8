"""The packaged catalog: every preset loads, parameter counts match the published ones, GPU entries are complete."""
import pytest

from paraplan.specs.cluster import PRECISIONS
from paraplan.specs.loaders import (list_clusters, list_gpus, list_models, load_cluster, load_gpu, load_model)

# ---- models ------------------------------------------------------------------------------------------------------
REQUIRED_MODELS = [
    "debug", "gpt-1.7b", "gpt-3.6b", "gpt-7.5b", "gpt-18.4b", "gpt-39.1b", "gpt-76.1b", "gpt-145.6b", "gpt-310.1b",
    "gpt-529.6b", "gpt-1t", "gpt-22b", "gpt3-175b", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b",
    "llama3-70b", "llama3-405b", "mixtral-8x7b", "mixtral-8x22b", "nemotron4-15b", "nemotron4-340b", "grok1-314b",
    "deepseek-v3", "qwen2-7b", "qwen2-72b",
]


def test_required_model_presets_present():
    assert set(REQUIRED_MODELS) <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_preset_loads(name):
    m = load_model(name)
    assert m.name == name
    assert m.source, f"preset {name} has no source"
    assert m.total_params() > 0 and 0 < m.active_params() <= m.total_params()


# (preset, published total params, published active params or None, tolerance, where the number comes from)
PUBLISHED = [
    ("llama3-8b", 8.03e9, None, 0.02, "Llama 3.1 model card: 8.03B"),
    ("llama3-70b", 70.6e9, None, 0.02, "Llama 3.1 model card: 70.6B"),
    ("llama3-405b", 405.9e9, None, 0.02, "Llama 3.1 model card: 405.9B (Llama 3 paper: 405B)"),
    ("llama2-7b", 6.74e9, None, 0.02, "Llama 2 paper / HF: 6.74B"),
    ("llama2-13b", 13.0e9, None, 0.02, "Llama 2 paper / HF: 13.0B"),
    ("llama2-70b", 68.98e9, None, 0.02, "HF Llama-2-70b-hf: 68.98B (marketed 70B)"),
    ("mixtral-8x7b", 46.7e9, 12.9e9, 0.02, "Mixtral paper arXiv 2401.04088: 47B total, 13B active; Mistral: 46.7B / 12.9B"),
    ("mixtral-8x22b", 141e9, 39e9, 0.02, "Mistral Mixtral 8x22B announcement: 141B total, 39B active"),
    ("gpt3-175b", 175e9, None, 0.02, "GPT-3 paper (Brown et al. 2020): 175B"),
    ("deepseek-v3", 671e9, 37e9, 0.02, "DeepSeek-V3 report arXiv 2412.19437: 671B total, 37B active (MTP excluded)"),
    ("nemotron4-15b", 15.7e9, None, 0.02, "Nemotron-4 15B paper: 3.2B embedding + 12.5B non-embedding"),
    ("nemotron4-340b", 341.0e9, None, 0.02, "Nemotron-4 340B report: 9.4B embedding + 331.6B non-embedding"),
    ("grok1-314b", 314e9, None, 0.02, "xAI Grok-1 release: 314B"),
    ("qwen2-7b", 7.62e9, None, 0.02, "Qwen2 report arXiv 2407.10671 / HF: 7.6B"),
    ("qwen2-72b", 72.7e9, None, 0.02, "Qwen2 report / HF: 72.7B"),
    # Narayanan et al. 2021 Table 1 names count learned position embeddings (s*h), which ModelSpec leaves out;
    # the 1.7B name is rounded (the formula gives 1.65B), hence the looser tolerance there.
    ("gpt-1.7b", 1.7e9, None, 0.035, "Narayanan et al. 2021 Table 1 (rounded to 1 decimal)"),
    ("gpt-3.6b", 3.6e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-7.5b", 7.5e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-18.4b", 18.4e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-39.1b", 39.1e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-76.1b", 76.1e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-145.6b", 145.6e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-310.1b", 310.1e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-529.6b", 529.6e9, None, 0.02, "Narayanan et al. 2021 Table 1"),
    ("gpt-1t", 1008e9, None, 0.02, "Narayanan et al. 2021 Table 1: 1008B"),
    ("gpt-22b", 22e9, None, 0.02, "Korthikanti et al. 2022 Table 3: 22B"),
    ("qwen3-30b-a3b", 30.5e9, 3.3e9, 0.02, "Qwen3 release blog / model card: 30.5B total, 3.3B activated"),
    ("qwen3-235b-a22b", 235e9, 22e9, 0.02, "Qwen3 release blog / model card: 235B total, 22B activated"),
    # the card's 5.1B active leaves out the unembedding (0.58B), which active_params counts
    ("gpt-oss-120b", 116.8e9, None, 0.02, "OpenAI gpt-oss model card: 116.8B total parameters"),
]


@pytest.mark.parametrize("name,total,active,tol,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_param_counts_match_published(name, total, active, tol, source):
    m = load_model(name)
    assert m.total_params() == pytest.approx(total, rel=tol), source
    if active is not None:
        assert m.active_params() == pytest.approx(active, rel=tol), source


def test_megatron_gpt_family_shape():
    for name in ("gpt-1.7b", "gpt-39.1b", "gpt-1t", "gpt-22b", "gpt3-175b"):
        m = load_model(name)
        assert m.ffn == 4 * m.hidden and m.vocab == 51200 and m.max_position == 2048
        assert not m.gated_mlp and m.linear_bias and m.norm == "layernorm" and m.tied_embeddings
    assert (load_model("gpt-22b").layers, load_model("gpt-22b").heads) == (48, 64)


def test_model_aliases_and_case():
    assert load_model("GPT-530B").name == "gpt-529.6b"
    assert load_model("gpt-1008b").name == "gpt-1t"
    assert load_model("gpt-175b").name == "gpt3-175b"
    assert load_model("Llama3.1-8B").name == "llama3-8b"
    assert load_model("LLAMA3_8B").name == "llama3-8b"


def test_moe_and_mla_presets():
    ds = load_model("deepseek-v3")
    assert ds.moe.num_experts == 256 and ds.moe.top_k == 8 and ds.moe.shared_experts == 1
    assert ds.moe.first_dense_layers == 3 and ds.num_moe_layers == 58 and ds.moe.expert_ffn == 2048
    assert ds.ffn == 18432 and ds.vocab == 129280 and ds.mla.kv_lora_rank == 512
    mx = load_model("mixtral-8x7b")
    assert mx.num_moe_layers == 32 and mx.kv_heads == 8
    grok = load_model("grok1-314b")
    assert (grok.moe.num_experts, grok.moe.top_k) == (8, 2)
    nem = load_model("nemotron4-340b")
    assert not nem.gated_mlp and nem.kv_heads == 8 and not nem.linear_bias


def test_llama3_family_conventions():
    for name in ("llama3-8b", "llama3-70b", "llama3-405b"):
        m = load_model(name)
        assert m.vocab == 128256 and m.norm == "rmsnorm" and not m.linear_bias and m.gated_mlp
        assert m.kv_heads == 8 and not m.tied_embeddings


def test_presets_match_validation_rows():
    # shapes used in shared/validation/published_runs.csv
    rows = {"gpt-145.6b": (80, 12288, 96, 49152, 51200), "llama2-70b": (80, 8192, 64, 28672, 32000),
            "llama3-405b": (126, 16384, 128, 53248, 128256), "nemotron4-15b": (32, 6144, 48, 24576, 256000)}
    for name, shape in rows.items():
        m = load_model(name)
        assert (m.layers, m.hidden, m.heads, m.ffn, m.vocab) == shape


# ---- GPUs --------------------------------------------------------------------------------------------------------
REQUIRED_GPUS = ["V100-SXM2-32GB", "V100-SXM2-16GB", "A100-SXM4-40GB", "A100-SXM4-80GB", "H100-SXM5-80GB",
                 "H100-96GB-HBM2e", "H200-SXM-141GB", "B200-SXM-180GB", "MI300X", "RTX-4090"]


def test_required_gpus_present():
    assert set(REQUIRED_GPUS) <= set(list_gpus())


@pytest.mark.parametrize("name", list_gpus())
def test_every_gpu_is_complete(name):
    g = load_gpu(name)
    assert g.name == name
    assert g.sources and all(isinstance(s, str) and s for s in g.sources)
    assert g.peak_tflops and all(v > 0 for v in g.peak_tflops.values())
    assert set(g.peak_tflops) <= set(PRECISIONS)
    if g.vendor == "google":                # TPUs publish only their bf16 matrix rate (no fp16 or fp32 MXU path)
        assert set(g.peak_tflops) == {"bf16"}
    else:
        assert "fp16" in g.peak_tflops and "fp32" in g.peak_tflops
        assert g.peak("bf16") >= g.peak("fp32")
    assert g.peak("fp8") >= g.peak("bf16")
    assert g.hbm_gib > 0 and g.hbm_gbps > 0 and g.sm_count > 0 and g.vendor in ("nvidia", "amd", "google")


def test_gpu_datasheet_values():
    h100 = load_gpu("H100")
    assert h100.name == "H100-SXM5-80GB"
    assert h100.peak("bf16") == pytest.approx(989.4) and h100.peak("fp8") == pytest.approx(1978.9)
    # capacity as nvidia-smi reports it (memory.total 81559 MiB), not the marketed 80 GB read as 10^9 bytes
    assert h100.hbm_gib == pytest.approx(81559 / 1024) and h100.hbm_gbps == 3350
    assert load_gpu("A100").peak("bf16") == 312 and load_gpu("a100-sxm4-40gb").hbm_gbps == 1555
    b200 = load_gpu("B200")
    assert b200.name == "B200-SXM-180GB" and b200.peak("bf16") == 2250 and b200.peak("fp8") == 4500
    assert b200.hbm_gbps == 8000 and b200.hbm_gib == pytest.approx(183359 / 1024)
    assert load_gpu("GB200").hbm_gib == pytest.approx(186e9 / 2**30)    # no driver figure: marketed GB
    assert load_gpu("mi300x").peak("bf16") == pytest.approx(1307.4) and load_gpu("MI300X").vendor == "amd"
    rtx = load_gpu("rtx-4090")
    assert rtx.peak("bf16") == pytest.approx(165.2) and rtx.sm_count == 128 and rtx.hbm_gbps == 1008
    v100 = load_gpu("V100")
    assert v100.name == "V100-SXM2-32GB" and "bf16" not in v100.peak_tflops and v100.peak("fp16") == 125
    assert load_gpu("H100-96GB-HBM2e").hbm_gbps == 2400
    assert any("500 W" in s for s in load_gpu("H100-96GB-HBM2e").sources)
    assert load_gpu("H200").hbm_gbps == 4800


# ---- clusters ----------------------------------------------------------------------------------------------------
REQUIRED_CLUSTERS = ["dgx-v100", "dgx-a100", "dgx-a100-40gb", "dgx-h100", "hgx-h200", "dgx-b200", "mi300x",
                     "grand-teton-h100"]


def test_required_clusters_present():
    assert set(REQUIRED_CLUSTERS) <= set(list_clusters())


@pytest.mark.parametrize("name", list_clusters())
def test_every_cluster_preset_loads(name):
    c = load_cluster(name)
    assert c.name == name and c.source and c.is_homogeneous
    g = c.primary
    assert not g.inter_node.nvls
    if name.startswith("tpu-"):
        # a TPU slice: ICI joins chips across host boundaries, so both levels are the same ICI
        assert g.gpus_per_node in (4, 8) and g.intra_node == g.inter_node and g.intra_node.bandwidth_gbps > 0
        return
    # an NVL72 rack is one 72-GPU NVLink domain, the cost model's node
    assert g.gpus_per_node == (72 if name.endswith("nvl72") else 8) and c.num_gpus == g.gpus_per_node * g.num_nodes
    assert g.intra_node.bandwidth_gbps > g.inter_node.bandwidth_gbps > 0
    assert 0 < g.intra_node.latency_us < g.inter_node.latency_us


def test_cluster_link_values():
    def links(name):
        g = load_cluster(name).primary
        return g.gpu.name, g.intra_node.bandwidth_gbps, g.inter_node.bandwidth_gbps, g.intra_node.nvls
    assert links("dgx-v100") == ("V100-SXM2-32GB", 150, 12.5, False)
    assert links("dgx-a100") == ("A100-SXM4-80GB", 300, 25, False)
    assert links("dgx-a100-40gb") == ("A100-SXM4-40GB", 300, 25, False)
    assert links("dgx-h100") == ("H100-SXM5-80GB", 450, 50, True)
    assert links("hgx-h200") == ("H200-SXM-141GB", 450, 50, True)
    assert links("dgx-b200") == ("B200-SXM-180GB", 900, 50, True)
    assert links("mi300x") == ("MI300X", 448, 50, False)
    assert links("grand-teton-h100") == ("H100-96GB-HBM2e", 450, 50, True)
    # TPU slices (jax-ml/scaling-book tpus.md): links per chip x one-way ICI bandwidth per link, in GB/s
    assert links("tpu-v4") == ("TPU-v4", 6 * 45, 6 * 45, False)          # 3D torus, 4.5e10 B/s
    assert links("tpu-v5p") == ("TPU-v5p", 6 * 100, 6 * 100, False)      # 3D torus, 1e11 B/s
    assert links("tpu-v5e") == ("TPU-v5e", 4 * 50, 4 * 50, False)        # 2D torus, 5e10 B/s
    assert links("tpu-v6e") == ("TPU-v6e", 4 * 100, 4 * 100, False)      # 2D torus, 1e11 B/s
