"""ModelSpec: the shape of a decoder-only transformer (dense or MoE), enough to count FLOPs, bytes and parameters."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from paraplan.errors import ParaplanError


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts MLP. `expert_ffn` is the inner size of one routed expert (per branch if gated)."""
    num_experts: int
    top_k: int
    expert_ffn: int
    shared_experts: int = 0          # always-active experts, each `shared_expert_ffn` wide
    shared_expert_ffn: int | None = None
    first_dense_layers: int = 0      # leading layers with a dense MLP of size ModelSpec.ffn (DeepSeek-V3: 3)
    moe_layer_freq: int = 1          # every k-th layer (after the dense ones) is MoE (Mixtral/DeepSeek: 1)

    def __post_init__(self):
        for name in ("num_experts", "top_k", "expert_ffn"):
            if getattr(self, name) <= 0:
                raise ParaplanError(f"moe.{name} must be a positive integer, got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ParaplanError(f"moe.top_k ({self.top_k}) must be <= moe.num_experts ({self.num_experts})")


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and KV projections."""
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int                          # dense MLP inner size (per branch if gated)
    vocab: int
    kv_heads: int | None = None       # None -> heads (multi-head attention); fewer -> GQA
    head_dim: int | None = None       # None -> hidden // heads
    gated_mlp: bool = False           # SwiGLU-style MLP: three matrices instead of two
    tied_embeddings: bool = False
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    max_position: int = 4096
    norm: str = "layernorm"           # "layernorm" or "rmsnorm"
    linear_bias: bool = True          # GPT-2/Megatron GPT use biases; Llama does not
    source: str = ""                  # where the numbers come from
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for name in ("layers", "hidden", "heads", "ffn", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ParaplanError(f"model {self.name!r}: {name} must be a positive integer, got {value!r}")
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        if self.kv_heads <= 0 or self.heads % self.kv_heads:
            raise ParaplanError(f"model {self.name!r}: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ParaplanError(f"model {self.name!r}: norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")

    def with_(self, **changes) -> "ModelSpec":
        return replace(self, **changes)

    # ---- derived sizes -------------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def q_dim(self) -> int:
        """Width of the query projection output (heads x query head dim)."""
        if self.mla:
            return self.heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection output."""
        if self.mla:
            return self.heads * self.mla.v_head_dim
        return self.kv_heads * self.head_dim

    def attention_params(self) -> int:
        """Weights of one attention block (projections only, biases included when the model has them)."""
        h = self.hidden
        if self.mla:
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            q = (h * m.q_lora_rank + m.q_lora_rank * self.heads * qk) if m.q_lora_rank else h * self.heads * qk
            kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * self.heads * (m.qk_nope_head_dim + m.v_head_dim)
            return q + kv + self.heads * m.v_head_dim * h
        params = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        if self.linear_bias:
            params += self.q_dim + 2 * self.kv_dim + h
        return params

    def mlp_params(self, ffn: int) -> int:
        matrices = 3 if self.gated_mlp else 2
        params = matrices * self.hidden * ffn
        if self.linear_bias:
            params += ffn * (matrices - 1) + self.hidden
        return params

    def is_moe_layer(self, layer_index: int) -> bool:
        if not self.moe or layer_index < self.moe.first_dense_layers:
            return False
        return (layer_index - self.moe.first_dense_layers) % self.moe.moe_layer_freq == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.layers))

    def expert_params_per_layer(self) -> int:
        """Routed-expert weights of one MoE layer (all experts)."""
        return self.moe.num_experts * self.mlp_params(self.moe.expert_ffn) if self.moe else 0

    def dense_mlp_params_per_moe_layer(self) -> int:
        """Non-routed MLP weights of one MoE layer: shared experts plus the router."""
        if not self.moe:
            return 0
        shared = self.moe.shared_experts * self.mlp_params(self.moe.shared_expert_ffn or self.moe.expert_ffn)
        return shared + self.hidden * self.moe.num_experts

    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden * (2 if self.norm == "layernorm" else 1)

    def layer_params(self, layer_index: int) -> int:
        base = self.attention_params() + self.norm_params_per_layer()
        if self.is_moe_layer(layer_index):
            return base + self.expert_params_per_layer() + self.dense_mlp_params_per_moe_layer()
        return base + self.mlp_params(self.ffn)

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def output_params(self) -> int:
        """LM head weights (0 extra when tied to the input embedding)."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    def total_params(self) -> int:
        return (sum(self.layer_params(i) for i in range(self.layers)) + self.embedding_params()
                + self.output_params() + self.hidden * (2 if self.norm == "layernorm" else 1))

    def active_params(self) -> int:
        """Parameters touched per token (routed experts counted top_k times, not num_experts)."""
        if not self.moe:
            return self.total_params()
        inactive = (self.moe.num_experts - self.moe.top_k) * self.mlp_params(self.moe.expert_ffn)
        return self.total_params() - inactive * self.num_moe_layers
