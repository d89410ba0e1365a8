"""Hugging Face `config.json` -> ModelSpec, for the llama, mistral, qwen2, mixtral, deepseek, gpt2, gpt_neox and
nemotron families, and multimodal configs that wrap a `text_config`."""
from __future__ import annotations

from typing import Any

from paraplan.errors import ParaplanError
from paraplan.specs._input import _int, _mapping
from paraplan.specs.model import MLASpec, ModelSpec, MoESpec

# ---- models: Hugging Face config.json --------------------------------------------------------------------------
# model_type -> family. The family fixes the MLP structure, norm, bias and the tie_word_embeddings default.
_HF_FAMILY = {
    "llama": "llama", "mistral": "llama", "mixtral": "mixtral", "qwen2": "qwen2", "qwen3": "llama",
    "qwen2_moe": "qwen_moe", "qwen3_moe": "qwen_moe", "deepseek_v2": "deepseek", "deepseek_v3": "deepseek",
    "gpt2": "gpt2", "gpt_neox": "gpt_neox", "nemotron": "nemotron",
    # text models inside multimodal wrappers
    "mllama_text_model": "llama", "qwen2_vl": "qwen2", "qwen2_vl_text": "qwen2", "qwen2_5_vl": "qwen2",
    "qwen2_5_vl_text": "qwen2",
}
# text_config without a model_type: what the wrapper class defaults to
_HF_WRAPPER_TEXT_DEFAULT = {"llava": "llama", "llava_next": "llama", "llava_onevision": "qwen2",
                            "mllama": "mllama_text_model", "qwen2_vl": "qwen2_vl_text", "qwen2_5_vl": "qwen2_5_vl_text"}
# Class defaults of transformers' LlamaConfig / MistralConfig [mem]. Applied only to a multimodal `text_config`, which
# older transformers wrote as a diff against these defaults (llava-1.5 configs hold little more than vocab_size).
_HF_TEXT_CONFIG_DEFAULTS = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "max_position_embeddings": 2048},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32},
}
_GATED_FAMILIES = {"llama", "mixtral", "qwen2", "qwen_moe", "deepseek"}   # gate/up/down MLP (SwiGLU) always
_TIE_DEFAULT = {"gpt2": True}                                             # others: False in their config classes
_NOT_SET = object()


def _hf_get(cfg: dict, *keys: str, default: Any = _NOT_SET, where: str = "config") -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    if default is _NOT_SET:
        raise ParaplanError(f"{where}: field '{keys[0]}' is missing" + (f" (also tried {', '.join(keys[1:])})" if keys[1:] else ""))
    return default


def _fit_layer_pattern(layers: int, moe_layers: list[int], where: str) -> tuple[int, int] | None:
    """(first_dense_layers, moe_layer_freq) reproducing the set of MoE layer indices, None if there are none."""
    if not moe_layers:
        return None
    first = moe_layers[0]
    freq = moe_layers[1] - first if len(moe_layers) > 1 else layers
    if list(range(first, layers, freq)) != moe_layers:
        raise ParaplanError(f"{where}: MoE layer pattern {moe_layers} is not 'k dense layers then every n-th'; "
                            "ModelSpec cannot represent it")
    return first, freq


def model_from_hf_config(cfg: dict, name: str = "hf-model", where: str | None = None) -> ModelSpec:
    """A ModelSpec from a Hugging Face `config.json` mapping (multimodal configs: their `text_config`)."""
    where = where or f"HF config '{name}'"
    try:
        return _model_from_hf_config(cfg, name, where)
    except ParaplanError as e:
        if str(e).startswith(where):
            raise
        raise ParaplanError(f"{where}: {e}") from None


def _model_from_hf_config(cfg: dict, name: str, where: str) -> ModelSpec:
    cfg = _mapping(cfg, "config", where)
    outer_type = cfg.get("model_type")
    extra: dict[str, Any] = {}
    if isinstance(cfg.get("text_config"), dict):
        text = dict(cfg["text_config"])
        text.setdefault("model_type", _HF_WRAPPER_TEXT_DEFAULT.get(outer_type, outer_type))
        defaults = _HF_TEXT_CONFIG_DEFAULTS.get(text["model_type"], {})
        if any(k not in text for k in defaults):
            extra["text_config_defaults_used"] = sorted(k for k in defaults if k not in text)
            text = {**defaults, **text}
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in cfg:
            text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
        extra["multimodal_wrapper"] = outer_type
        extra["vision_params_counted"] = False
        cfg = text
        where = f"{where} (text_config)"
    model_type = cfg.get("model_type")
    family = _HF_FAMILY.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        supported = sorted(k for k in _HF_FAMILY)
        raise ParaplanError(f"{where}: unsupported model_type {model_type!r}; supported: {', '.join(supported)} "
                            "(and multimodal configs with a text_config of these)")
    extra["hf_model_type"] = model_type

    def get(*keys, default=_NOT_SET):
        return _hf_get(cfg, *keys, default=default, where=where)

    def geti(*keys, default=_NOT_SET, minimum=1):
        value = get(*keys, default=default)
        return value if value is None else _int(value, keys[0], where, minimum=minimum)

    layers = geti("num_hidden_layers", "n_layer")
    hidden = geti("hidden_size", "n_embd", "d_model")
    heads = geti("num_attention_heads", "n_head")
    vocab = geti("vocab_size")
    kv_heads = geti("num_key_value_heads", default=heads)
    head_dim = geti("head_dim", default=None)
    if family == "gpt2":
        ffn = geti("n_inner", default=4 * hidden)
    else:
        ffn = geti("intermediate_size", "n_inner")
    max_position = geti("max_position_embeddings", "n_positions", "n_ctx", default=4096)
    tied = get("tie_word_embeddings", default=_TIE_DEFAULT.get(family, False))
    if not isinstance(tied, bool):
        raise ParaplanError(f"{where}: field 'tie_word_embeddings' must be true or false, got {tied!r}")
    act = get("hidden_act", "activation_function", default=None)
    if act is not None:
        extra["hidden_act"] = act

    norm = "layernorm" if family in ("gpt2", "gpt_neox", "nemotron") else "rmsnorm"
    gated = family in _GATED_FAMILIES
    if family == "gpt2":
        bias = True
    elif family == "gpt_neox":
        bias = bool(get("attention_bias", default=True))          # NeoX MLP always has biases
    elif family in ("qwen2", "qwen_moe"):
        bias = False      # Qwen2: bias on q/k/v only (~0.01% of parameters); ModelSpec has one switch
        if family == "qwen2":
            extra["qkv_bias"] = True
    else:
        bias = bool(get("attention_bias", default=False) or get("mlp_bias", default=False))

    moe = mla = None
    if family == "mixtral":
        n_exp = geti("num_local_experts", "num_experts")
        moe = MoESpec(num_experts=n_exp, top_k=geti("num_experts_per_tok"), expert_ffn=ffn)
    elif family == "qwen_moe":
        n_exp = geti("num_experts", "num_local_experts", default=0, minimum=0)
        if n_exp:
            step = geti("decoder_sparse_step", default=1)
            only = get("mlp_only_layers", default=[])
            if not isinstance(only, list):
                raise ParaplanError(f"{where}: field 'mlp_only_layers' must be a list of layer indices")
            moe_layers = [i for i in range(layers) if i not in only and (i + 1) % step == 0]
            pattern = _fit_layer_pattern(layers, moe_layers, where)
            shared_ffn = geti("shared_expert_intermediate_size", default=0, minimum=0)
            if pattern:
                moe = MoESpec(num_experts=n_exp, top_k=geti("num_experts_per_tok"),
                              expert_ffn=geti("moe_intermediate_size"),
                              shared_experts=1 if shared_ffn else 0, shared_expert_ffn=shared_ffn or None,
                              first_dense_layers=pattern[0], moe_layer_freq=pattern[1])
    elif family == "deepseek":
        n_exp = geti("n_routed_experts", "num_local_experts", default=None)
        if n_exp:
            first_k = geti("first_k_dense_replace", default=0, minimum=0)
            freq = geti("moe_layer_freq", default=1)
            moe_layers = [i for i in range(layers) if i >= first_k and i % freq == 0]
            pattern = _fit_layer_pattern(layers, moe_layers, where)
            n_shared = geti("n_shared_experts", default=0, minimum=0)
            expert_ffn = geti("moe_intermediate_size")
            if pattern:
                moe = MoESpec(num_experts=n_exp, top_k=geti("num_experts_per_tok"), expert_ffn=expert_ffn,
                              shared_experts=n_shared, shared_expert_ffn=expert_ffn if n_shared else None,
                              first_dense_layers=pattern[0], moe_layer_freq=pattern[1])
        if cfg.get("kv_lora_rank") is not None:
            mla = MLASpec(q_lora_rank=geti("q_lora_rank", default=None),
                          kv_lora_rank=geti("kv_lora_rank"), qk_nope_head_dim=geti("qk_nope_head_dim"),
                          qk_rope_head_dim=geti("qk_rope_head_dim"), v_head_dim=geti("v_head_dim"))
        if cfg.get("num_nextn_predict_layers"):
            extra["mtp_layers"] = cfg["num_nextn_predict_layers"]
    if isinstance(cfg.get("cross_attention_layers"), list):   # mllama: counted as ordinary decoder layers
        extra["cross_attention_layers"] = len(cfg["cross_attention_layers"])
    for k in ("sliding_window", "rope_theta", "partial_rotary_factor", "rotary_pct"):
        if cfg.get(k) is not None:
            extra[k] = cfg[k]
    return ModelSpec(name=name, layers=layers, hidden=hidden, heads=heads, ffn=ffn, vocab=vocab,
                     kv_heads=kv_heads, head_dim=head_dim, gated_mlp=gated, tied_embeddings=tied, moe=moe,
                     mla=mla, max_position=max_position, norm=norm, linear_bias=bias,
                     source=f"Hugging Face config.json (model_type {model_type})", extra=extra)
