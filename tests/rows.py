"""A measured-runs row every version of the estimator can model, shared by the CLI and runs tests."""


def synthetic_row(**changes) -> dict:
    """Llama-3-8B on 8 H100s: a row every version of the estimator can model."""
    row = {"id": "cli_syn_01", "source": "test", "framework": "nemo", "model": "llama3-8b", "layers": "32",
           "hidden": "4096", "heads": "32", "kv_heads": "8", "ffn": "14336", "vocab": "128256", "seq_len": "8192",
           "gated_mlp": "true", "num_experts": "", "top_k": "", "expert_ffn": "", "global_batch": "128",
           "micro_batch": "1", "tp": "2", "pp": "1", "dp": "4", "cp": "1", "ep": "1", "vpp": "1",
           "sequence_parallel": "true", "recompute": "none", "zero": "1", "gpu": "H100-SXM5-80GB", "num_gpus": "8",
           "gpus_per_node": "8", "intra_node_GBps": "450", "inter_node_Gbps": "400", "precision": "bf16",
           "measured_iter_time_s": "14.0", "notes": ""}
    row.update(changes)
    return row
