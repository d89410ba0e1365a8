"""Loaders: Hugging Face configs, user model/cluster files, NAME:GPUS, cluster_from_links, and their error messages."""
import json
from pathlib import Path

import pytest
import yaml

from paraplan.errors import ParaplanError
from paraplan.specs.loaders import (cluster_from_links, list_clusters, list_gpus, load_cluster, load_gpu, load_model,
                                    model_from_hf_config)

HF = Path(__file__).parent / "fixtures" / "hf"
EXAMPLES = Path(__file__).parent.parent / "examples"


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# ---- Hugging Face configs ----------------------------------------------------------------------------------------
def test_hf_llama3_8b_matches_preset():
    m = load_model(str(HF / "llama3-8b.json"))
    assert m.name == "llama3-8b"
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab) == (32, 4096, 32, 8, 128, 14336, 128256)
    assert m.gated_mlp and m.norm == "rmsnorm" and not m.linear_bias and not m.tied_embeddings and m.moe is None
    assert m.max_position == 131072
    assert m.total_params() == load_model("llama3-8b").total_params()


def test_hf_qwen2_7b():
    m = load_model(str(HF / "qwen2-7b.json"))
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.ffn, m.vocab) == (28, 3584, 28, 4, 18944, 152064)
    assert m.gated_mlp and not m.linear_bias and m.extra["qkv_bias"]
    assert m.total_params() == pytest.approx(7.62e9, rel=0.02)


def test_hf_mixtral():
    m = load_model(str(HF / "mixtral-8x7b.json"))
    assert m.moe.num_experts == 8 and m.moe.top_k == 2 and m.moe.expert_ffn == 14336 and m.num_moe_layers == 32
    assert m.total_params() == pytest.approx(46.7e9, rel=0.02)
    assert m.active_params() == pytest.approx(12.9e9, rel=0.02)


def test_hf_deepseek_v3():
    m = load_model(str(HF / "deepseek-v3.json"))
    assert m.moe.num_experts == 256 and m.moe.top_k == 8 and m.moe.shared_experts == 1
    assert m.moe.shared_expert_ffn == 2048 and m.moe.first_dense_layers == 3 and m.moe.moe_layer_freq == 1
    assert m.mla.q_lora_rank == 1536 and m.mla.kv_lora_rank == 512 and m.mla.qk_rope_head_dim == 64
    assert m.ffn == 18432 and m.vocab == 129280 and m.extra["mtp_layers"] == 1
    assert m.total_params() == load_model("deepseek-v3").total_params()
    assert m.active_params() == pytest.approx(37e9, rel=0.03)


def test_hf_gpt2():
    m = load_model(str(HF / "gpt2.json"))
    assert (m.layers, m.hidden, m.heads, m.ffn, m.vocab, m.max_position) == (12, 768, 12, 3072, 50257, 1024)
    assert m.tied_embeddings and m.linear_bias and not m.gated_mlp and m.norm == "layernorm"
    # 124M with learned position embeddings (1024*768 = 0.8M), which ModelSpec does not count
    assert m.total_params() == pytest.approx(124.4e6, rel=0.02)


def test_hf_gpt_neox_20b():
    m = load_model(str(HF / "gpt-neox-20b.json"))
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.ffn, m.vocab) == (44, 6144, 64, 64, 24576, 50432)
    assert m.linear_bias and not m.gated_mlp and not m.tied_embeddings and m.norm == "layernorm"
    assert m.total_params() == pytest.approx(20.55e9, rel=0.02)   # GPT-NeoX-20B paper: 20.55B (arXiv 2204.06745)


def test_hf_llava_uses_text_config_and_class_defaults():
    m = load_model(str(HF / "llava-1.5-7b.json"))
    assert (m.layers, m.hidden, m.heads, m.ffn, m.vocab, m.max_position) == (32, 4096, 32, 11008, 32064, 4096)
    assert m.extra["multimodal_wrapper"] == "llava" and m.gated_mlp and not m.tied_embeddings


def test_hf_mllama_text_config():
    m = load_model(str(HF / "llama3.2-11b-vision.json"))
    assert (m.layers, m.hidden, m.kv_heads, m.vocab) == (40, 4096, 8, 128256)
    assert m.extra["cross_attention_layers"] == 8


def test_hf_checkpoint_folder(tmp_path):
    (tmp_path / "Meta-Llama-3.1-8B").mkdir()
    (tmp_path / "Meta-Llama-3.1-8B" / "config.json").write_text((HF / "llama3-8b.json").read_text())
    m = load_model(str(tmp_path / "Meta-Llama-3.1-8B"))
    assert m.name == "Meta-Llama-3.1-8B" and m.layers == 32


def test_hf_dict_families():
    nem = model_from_hf_config({"model_type": "nemotron", "hidden_size": 6144, "intermediate_size": 24576,
                                "num_hidden_layers": 32, "num_attention_heads": 48, "num_key_value_heads": 8,
                                "hidden_act": "relu2", "vocab_size": 256000, "tie_word_embeddings": False},
                               name="nemotron4-15b")
    assert not nem.gated_mlp and nem.norm == "layernorm" and nem.kv_heads == 8
    assert nem.total_params() == load_model("nemotron4-15b").total_params()
    mistral = model_from_hf_config({"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                    "vocab_size": 32000, "sliding_window": 4096})
    assert mistral.gated_mlp and mistral.extra["sliding_window"] == 4096 and mistral.name == "hf-model"
    qmoe = model_from_hf_config({"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
                                 "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
                                 "vocab_size": 151936, "num_experts": 60, "num_experts_per_tok": 4,
                                 "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                                 "decoder_sparse_step": 1, "mlp_only_layers": []})
    assert qmoe.moe.num_experts == 60 and qmoe.moe.shared_experts == 1 and qmoe.moe.shared_expert_ffn == 5632
    assert qmoe.total_params() == pytest.approx(14.3e9, rel=0.03)   # Qwen1.5-MoE-A2.7B: 14.3B total (Qwen blog)
    every_other = model_from_hf_config({"model_type": "qwen2_moe", "hidden_size": 256, "intermediate_size": 512,
                                        "num_hidden_layers": 8, "num_attention_heads": 4, "vocab_size": 1000,
                                        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                                        "decoder_sparse_step": 2})
    assert [every_other.is_moe_layer(i) for i in range(8)] == [False, True] * 4
    ds2 = model_from_hf_config({"model_type": "deepseek_v2", "hidden_size": 2048, "intermediate_size": 10944,
                                "num_hidden_layers": 27, "num_attention_heads": 16, "vocab_size": 102400,
                                "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
                                "moe_intermediate_size": 1408, "first_k_dense_replace": 1, "moe_layer_freq": 1,
                                "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                                "qk_rope_head_dim": 64, "v_head_dim": 128})
    assert ds2.mla.q_lora_rank is None and ds2.moe.shared_experts == 2
    assert ds2.total_params() == pytest.approx(15.7e9, rel=0.03)   # DeepSeek-V2-Lite: 15.7B total


def test_hf_unsupported_model_type():
    with pytest.raises(ParaplanError) as e:
        model_from_hf_config({"model_type": "t5", "d_model": 512})
    msg = one_line_error(e)
    assert "'t5'" in msg and "llama" in msg and "deepseek_v3" in msg


def test_hf_missing_field_names_file_and_field(tmp_path):
    cfg = json.loads((HF / "llama3-8b.json").read_text())
    del cfg["num_hidden_layers"]
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ParaplanError) as e:
        load_model(str(p))
    msg = one_line_error(e)
    assert str(p) in msg and "num_hidden_layers" in msg


def test_hf_invalid_field(tmp_path):
    cfg = json.loads((HF / "mixtral-8x7b.json").read_text())
    cfg["num_experts_per_tok"] = 9
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ParaplanError) as e:
        load_model(str(p))
    assert "top_k" in one_line_error(e) and str(p) in str(e.value)
    cfg["hidden_size"] = "big"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ParaplanError) as e:
        load_model(str(p))
    assert "hidden_size" in one_line_error(e)


# ---- ModelSpec YAML/JSON files -----------------------------------------------------------------------------------
def test_model_yaml_file(tmp_path):
    p = tmp_path / "my-moe.yaml"
    p.write_text(yaml.safe_dump({"layers": 4, "hidden": 512, "heads": 8, "kv_heads": 2, "ffn": 2048, "vocab": 32000,
                                 "gated_mlp": True, "norm": "rmsnorm", "linear_bias": False,
                                 "moe": {"num_experts": 4, "top_k": 2, "expert_ffn": 1024},
                                 "source": "test"}))
    m = load_model(str(p))
    assert m.name == "my-moe" and m.moe.num_experts == 4 and m.kv_heads == 2 and m.source == "test"


def test_model_json_file_with_mla_and_base(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"name": "small-ds", "base": "deepseek-v3", "layers": 5}))
    m = load_model(str(p))
    assert m.name == "small-ds" and m.layers == 5 and m.mla.kv_lora_rank == 512 and m.moe.num_experts == 256
    assert load_model("deepseek-v3").layers == 61   # the preset is untouched


def test_debug_preset_is_small():
    m = load_model("debug")
    assert (m.layers, m.hidden, m.heads, m.ffn, m.vocab) == (2, 256, 4, 1024, 1024)


@pytest.mark.parametrize("content,field", [
    ("layers: 2\nhidden: 256\nheads: 4\nffn: 1024\n", "vocab"),                    # missing
    ("layers: two\nhidden: 256\nheads: 4\nffn: 1024\nvocab: 10\n", "layers"),       # wrong type
    ("layers: 2\nhidden: 256\nheads: 4\nffn: 1024\nvocab: 10\nnorm: batchnorm\n", "norm"),
    ("layers: 2\nhidden: 256\nheads: 4\nffn: 1024\nvocab: 10\nlayerz: 3\n", "layerz"),  # unknown field
    ("layers: 2\nhidden: 256\nheads: 4\nffn: 1024\nvocab: 10\ngated_mlp: maybe\n", "gated_mlp"),
    ("layers: 2\nhidden: 256\nheads: 4\nffn: 1024\nvocab: 10\nmoe: {num_experts: 4}\n", "moe.top_k"),
    ("layers: 2\nhidden: 256\nheads: 4\nkv_heads: 3\nffn: 1024\nvocab: 10\n", "kv_heads"),
    ("layers: 2\nhidden: 256\nheads: 4\nffn: 1024\nvocab: 10\nmla: {kv_lora_rank: 8}\n", "mla.qk_nope_head_dim"),
])
def test_model_file_bad_fields(tmp_path, content, field):
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    with pytest.raises(ParaplanError) as e:
        load_model(str(p))
    msg = one_line_error(e)
    assert field in msg and str(p) in msg


def test_model_malformed_files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("layers: [1, 2\nhidden: 3\n")
    with pytest.raises(ParaplanError) as e:
        load_model(str(bad_yaml))
    assert "malformed YAML" in one_line_error(e) and str(bad_yaml) in str(e.value)
    bad_json = tmp_path / "config.json"
    bad_json.write_text('{"model_type": "llama",')
    with pytest.raises(ParaplanError) as e:
        load_model(str(bad_json))
    assert "malformed JSON" in one_line_error(e) and "line 1" in str(e.value)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ParaplanError) as e:
        load_model(str(not_mapping))
    assert "mapping" in one_line_error(e)


def test_model_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ParaplanError) as e:
        load_model(str(tmp_path / "nope.yaml"))
    assert "not found" in one_line_error(e)
    with pytest.raises(ParaplanError) as e:
        load_model("llama9-1t")
    msg = one_line_error(e)
    assert "unknown model 'llama9-1t'" in msg and "llama3-8b" in msg and "deepseek-v3" in msg
    with pytest.raises(ParaplanError):
        load_model("")


# ---- GPUs --------------------------------------------------------------------------------------------------------
def test_gpu_lookup_is_case_insensitive_with_aliases():
    assert load_gpu("h100-sxm5-80gb").name == "H100-SXM5-80GB"
    assert load_gpu("H100_SXM5_80GB").name == "H100-SXM5-80GB"
    assert load_gpu("b200").name == "B200-SXM-180GB"
    assert load_gpu("A100-80GB").name == "A100-SXM4-80GB"
    assert load_gpu("4090").name == "RTX-4090"


def test_unknown_gpu_lists_known():
    with pytest.raises(ParaplanError) as e:
        load_gpu("TPU-v9")
    msg = one_line_error(e)
    assert msg.startswith("unknown GPU 'TPU-v9'; known: ")
    assert all(name in msg for name in list_gpus())


# ---- clusters ----------------------------------------------------------------------------------------------------
def test_cluster_name_colon_gpus():
    c = load_cluster("dgx-h100:64")
    assert c.num_gpus == 64 and c.primary.num_nodes == 8 and c.gpus_per_node == 8 and c.gpu.name == "H100-SXM5-80GB"
    assert load_cluster("DGX-A100:16").num_gpus == 16


def test_cluster_num_gpus_argument():
    c = load_cluster("dgx-a100", num_gpus=256)
    assert c.primary.num_nodes == 32 and c.num_gpus == 256
    small = load_cluster("dgx-h100", num_gpus=4)
    assert small.primary.num_nodes == 1 and small.gpus_per_node == 4 and small.num_gpus == 4
    odd = load_cluster("dgx-h100", num_gpus=12)          # rounded up to whole nodes
    assert odd.primary.num_nodes == 2 and odd.num_gpus == 16
    assert load_cluster("dgx-h100").num_gpus == 8        # default_nodes: 1


def test_cluster_conflicting_sizes():
    with pytest.raises(ParaplanError) as e:
        load_cluster("dgx-h100:64", num_gpus=32)
    assert "64" in one_line_error(e) and "32" in str(e.value)
    with pytest.raises(ParaplanError) as e:
        load_cluster("dgx-h100:lots")
    one_line_error(e)
    with pytest.raises(ParaplanError):
        load_cluster("dgx-h100", num_gpus=0)


def test_unknown_cluster():
    with pytest.raises(ParaplanError) as e:
        load_cluster("dgx-z900:8")
    msg = one_line_error(e)
    assert "unknown cluster 'dgx-z900'" in msg and all(n in msg for n in list_clusters())


def test_cluster_file_single_type(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({
        "name": "lab", "gpu": "A100-40GB", "gpus_per_node": 4, "nodes": 3,
        "intra_node": {"name": "nvlink3", "bandwidth_gbps": 200, "latency_us": 2.5},
        "inter_node": {"name": "roce", "bandwidth_gbit": 100}}))
    c = load_cluster(str(p))
    assert c.name == "lab" and c.num_gpus == 12 and c.gpu.name == "A100-SXM4-40GB"
    assert c.primary.inter_node.bandwidth_gbps == 12.5 and c.primary.inter_node.latency_us == 8
    assert load_cluster(str(p), num_gpus=16).primary.num_nodes == 4


def test_cluster_file_num_gpus_and_base(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"base": "dgx-h100", "num_gpus": 32, "inter_node": {"bandwidth_gbps": 25}}))
    c = load_cluster(str(p))
    assert c.name == "c" and c.num_gpus == 32 and c.primary.inter_node.bandwidth_gbps == 25
    assert c.primary.inter_node.name == "ib-ndr" and c.primary.intra_node.nvls


def test_cluster_example_file_is_heterogeneous():
    c = load_cluster(str(EXAMPLES / "cluster_example.yaml"))
    assert not c.is_homogeneous and c.num_gpus == 48
    h100, rtx = c.node_groups
    assert h100.gpu.name == "H100-SXM5-80GB" and h100.num_nodes == 2 and h100.inter_node.bandwidth_gbps == 12.5
    assert h100.intra_node.bandwidth_gbps == 450
    assert rtx.gpu.name == "RTX-4090" and rtx.num_gpus == 32
    with pytest.raises(ParaplanError) as e:
        load_cluster(str(EXAMPLES / "cluster_example.yaml"), num_gpus=64)
    assert "heterogeneous" in one_line_error(e)


@pytest.mark.parametrize("data,field", [
    ({"gpu": "H100", "gpus_per_node": 8, "intra_node": {"bandwidth_gbps": 450}}, "inter_node"),
    ({"gpu": "H999", "gpus_per_node": 8, "intra_node": {"bandwidth_gbps": 1}, "inter_node": {"bandwidth_gbps": 1}}, "gpu"),
    ({"gpu": "H100", "gpus_per_node": 0, "intra_node": {"bandwidth_gbps": 1}, "inter_node": {"bandwidth_gbps": 1}}, "gpus_per_node"),
    ({"gpu": "H100", "gpus_per_node": 8, "intra_node": {"latency_us": 1}, "inter_node": {"bandwidth_gbps": 1}}, "intra_node.bandwidth_gbps"),
    ({"gpu": "H100", "gpus_per_node": 8, "intra_node": {"bandwidth_gbps": -1}, "inter_node": {"bandwidth_gbps": 1}}, "intra_node.bandwidth_gbps"),
    ({"gpu": "H100", "gpus_per_node": 8, "intra_node": {"bandwidth_gbps": 1, "speed": 2}, "inter_node": {"bandwidth_gbps": 1}}, "speed"),
    ({"base": "dgx-h100", "nodez": 2}, "nodez"),
    ({"node_groups": []}, "node_groups"),
    ({"node_groups": [{"preset": "dgx-h100"}, {"preset": "dgx-a100", "num_nodes": "two"}]}, "num_nodes"),
])
def test_cluster_file_bad_fields(tmp_path, data, field):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ParaplanError) as e:
        load_cluster(str(p))
    msg = one_line_error(e)
    assert field in msg and str(p) in msg


def test_cluster_missing_and_malformed_file(tmp_path):
    with pytest.raises(ParaplanError) as e:
        load_cluster(str(tmp_path / "none.yaml"))
    assert "not found" in one_line_error(e)
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\n  gpu: [\n")
    with pytest.raises(ParaplanError) as e:
        load_cluster(str(p))
    assert "malformed YAML" in one_line_error(e)


# ---- cluster_from_links ------------------------------------------------------------------------------------------
def test_cluster_from_links_measured_row():
    c = cluster_from_links("A100-SXM4-80GB", 256, 8, 300, 200)
    g = c.primary
    assert c.num_gpus == 256 and g.num_nodes == 32
    assert g.intra_node.bandwidth_gbps == 300 and g.inter_node.bandwidth_gbps == 25 and not g.intra_node.nvls
    h = cluster_from_links("H100-SXM5-80GB", 64, 8, 450, 400).primary
    assert h.intra_node.nvls and h.inter_node.bandwidth_gbps == 50 and h.intra_node.latency_us == 3
    assert cluster_from_links("H200-SXM-141GB", 16, 8, 450, 400).primary.intra_node.nvls
    assert cluster_from_links("B200", 16, 8, 900, 400).primary.intra_node.nvls
    assert cluster_from_links("H100-96GB-HBM2e", 8, 8, 450, 400).primary.intra_node.nvls


def test_cluster_from_links_defaults_from_preset():
    g = cluster_from_links("A100-SXM4-80GB", 512, 8, None, 200).primary   # MegaScale rows: intra blank
    assert g.intra_node.bandwidth_gbps == 300 and g.intra_node.name == "nvlink3"
    g = cluster_from_links("H100", 4, 8, None, None).primary
    assert g.num_nodes == 1 and g.gpus_per_node == 4 and g.inter_node.bandwidth_gbps == 50
    assert cluster_from_links("V100-SXM2-16GB", 16, 8, None, None).primary.intra_node.bandwidth_gbps == 150


def test_cluster_from_links_without_preset():
    c = cluster_from_links("RTX-4090", 16, 8, 25, 100)
    assert c.primary.intra_node.bandwidth_gbps == 25 and not c.primary.intra_node.nvls
    with pytest.raises(ParaplanError) as e:
        cluster_from_links("RTX-4090", 16, 8, None, 100)
    assert "RTX-4090" in one_line_error(e)
    with pytest.raises(ParaplanError):
        cluster_from_links("H100", 0, 8, 450, 400)


def test_cluster_from_links_for_every_validation_row():
    import csv
    csv_path = Path("/work/shared/validation/published_runs.csv")
    if not csv_path.exists():
        pytest.skip("shared validation data not present")
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            c = cluster_from_links(row["gpu"], int(row["num_gpus"]), int(row["gpus_per_node"]),
                                   float(row["intra_node_GBps"]) if row["intra_node_GBps"] else None,
                                   float(row["inter_node_Gbps"]) if row["inter_node_Gbps"] else None)
            assert c.num_gpus >= int(row["num_gpus"])
