"""One validated config dataclass for the Transformer families.

The same fields describe GPT-2 style models (learned positions, LayerNorm,
GELU, tied embeddings) and modern ones (RoPE, RMSNorm, SwiGLU, grouped-query
attention). Configs are plain frozen dataclasses so they work without gin;
the training layer registers them with gin.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from llmos_jax.errors import UserError
from llmos_jax.models.embeddings import Rope

PositionEmbedding = Literal["learned", "rope", "none"]
NormKind = Literal["layernorm", "rmsnorm"]
MlpActivation = Literal["gelu", "gelu_exact", "relu", "silu", "swiglu", "geglu"]
RematPolicy = Literal["none", "full", "dots", "dots_with_no_batch_dims"]
RopeScaling = Literal["none", "linear", "llama3"]

_CHOICES = {
    "position_embedding": ("learned", "rope", "none"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp_activation": ("gelu", "gelu_exact", "relu", "silu", "swiglu", "geglu"),
    "remat_policy": ("none", "full", "dots", "dots_with_no_batch_dims"),
    "dtype": ("float32", "bfloat16", "float16"),
    "param_dtype": ("float32", "bfloat16"),
    "rope_scaling": ("none", "linear", "llama3"),
}

GATED_ACTIVATIONS = ("swiglu", "geglu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a Transformer language model.

    Attributes:
      vocab_size: Number of token ids.
      num_layers: Number of Transformer blocks.
      embed_dim: Width of the residual stream.
      num_heads: Query heads.
      num_kv_heads: Key/value heads; fewer than `num_heads` gives grouped-query
        attention, 1 gives multi-query attention. Defaults to `num_heads`.
      head_dim: Width of each head. Defaults to `embed_dim // num_heads`.
      mlp_dim: Hidden width of the MLP. Defaults to `4 * embed_dim`.
      max_len: Longest sequence; sizes the learned position table.
      position_embedding: "learned" (GPT-2), "rope" (rotary) or "none".
      rope_theta: RoPE base frequency.
      rope_scaling: Context extension of RoPE: "none", "linear" (positions
        divided by `rope_scaling_factor`) or "llama3" (Llama 3.1's
        per-frequency scaling, with `rope_low_freq_factor`,
        `rope_high_freq_factor` and `rope_original_max_len`).
      rope_scaling_factor: How much longer the extended context is.
      rope_low_freq_factor, rope_high_freq_factor, rope_original_max_len:
        Llama 3's band edges: wavelengths above `original_max_len /
        low_freq_factor` are scaled fully, those below `original_max_len /
        high_freq_factor` not at all, those between smoothly.
      sliding_window: Each token attends to at most this many tokens (itself
        included), in training and decoding (Mistral); None: all before it.
      qkv_bias: Biases on the query, key and value projections only (Qwen2);
        None follows `use_bias`.
      scale_embeddings: Multiply token embeddings by sqrt(embed_dim) before
        the first block (Gemma); the tied output projection is not scaled.
      norm: "layernorm" (GPT-2) or "rmsnorm".
      norm_eps: Epsilon of the norms.
      mlp_activation: "gelu" (tanh approximation, GPT-2), "gelu_exact",
        "relu", "silu", or the gated "swiglu" / "geglu".
      use_bias: Biases on projections and LayerNorm (GPT-2 has them).
      tie_embeddings: Compute logits with the token embedding matrix.
      dropout_rate: Dropout on embeddings, attention probabilities and the
        residual branches; active only when the model is called with a
        dropout key.
      mlp_hidden_dropout: Also drop the MLP's hidden activations (after the
        activation, before the output projection) at `dropout_rate`, as T5's
        `DenseReluDense` does; BERT and GPT-2 do not.
      dtype: Compute dtype of activations and matmuls.
      param_dtype: Storage dtype of parameters (keep float32 for bf16
        training).
      scan_layers: Stack blocks along a `layers` axis and run them with
        `jax.lax.scan`: compile time stops growing with depth.
      remat_policy: Rematerialisation of each block in the backward pass:
        "none", "full" (save only block inputs), "dots" or
        "dots_with_no_batch_dims" (save matmul outputs).
      init_std: Standard deviation of the normal initialiser. Residual output
        projections use `init_std / sqrt(2 * num_layers)` (GPT-2).
      attention_impl: "xla" (einsum, supports dropout on probabilities) or
        "cudnn" (fused kernel on NVIDIA GPUs, no probability dropout).
      attention_query_block: With "xla", causal self-attention runs this many
        queries at a time and skips the fully masked key blocks (0: all at
        once). Same outputs; fewer FLOPs once the context exceeds it.
    """

    vocab_size: int
    num_layers: int = 2
    embed_dim: int = 128
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_dim: int | None = None
    max_len: int = 256
    position_embedding: PositionEmbedding = "learned"
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling = "none"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    sliding_window: int | None = None
    qkv_bias: bool | None = None
    scale_embeddings: bool = False
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    mlp_activation: MlpActivation = "gelu"
    use_bias: bool = True
    tie_embeddings: bool = True
    dropout_rate: float = 0.0
    mlp_hidden_dropout: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: RematPolicy = "none"
    init_std: float = 0.02
    attention_impl: Literal["xla", "cudnn"] = "xla"
    attention_query_block: int = 64

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise UserError(
                    f"TransformerConfig.{name}={value!r} is not one of {', '.join(choices)}; "
                    f"set TransformerConfig.{name} in your model gin file."
                )
        if self.attention_impl not in ("xla", "cudnn"):
            raise UserError(
                f"TransformerConfig.attention_impl={self.attention_impl!r} is not one of xla, cudnn."
            )
        if self.attention_query_block < 0:
            raise UserError(
                f"TransformerConfig.attention_query_block={self.attention_query_block} is "
                "negative; use 0 to attend with all queries at once.")
        for name in ("vocab_size", "num_layers", "embed_dim", "num_heads", "max_len"):
            if getattr(self, name) <= 0:
                raise UserError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.embed_dim % self.num_heads:
                raise UserError(
                    f"TransformerConfig.embed_dim={self.embed_dim} is not divisible by "
                    f"num_heads={self.num_heads}; set head_dim explicitly or change num_heads."
                )
            object.__setattr__(self, "head_dim", self.embed_dim // self.num_heads)
        if self.mlp_dim is None:
            object.__setattr__(self, "mlp_dim", 4 * self.embed_dim)
        for name in ("head_dim", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise UserError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise UserError(
                f"TransformerConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (grouped-query attention)."
            )
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise UserError(f"RoPE needs an even head_dim, got head_dim={self.head_dim}.")
        if self.rope_scaling != "none" and self.rope_scaling_factor <= 0:
            raise UserError("TransformerConfig.rope_scaling_factor must be positive, got "
                            f"{self.rope_scaling_factor}.")
        if self.rope_scaling == "llama3" and not (
                0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
            raise UserError(
                "TransformerConfig.rope_low_freq_factor must be positive and below "
                f"rope_high_freq_factor, got {self.rope_low_freq_factor} and "
                f"{self.rope_high_freq_factor}.")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise UserError("TransformerConfig.sliding_window must be positive or None, got "
                            f"{self.sliding_window}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserError(f"TransformerConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.")

    @property
    def gated_mlp(self) -> bool:
        return self.mlp_activation in GATED_ACTIVATIONS

    @property
    def qkv_biased(self) -> bool:
        """Whether the query, key and value projections have biases."""
        return self.use_bias if self.qkv_bias is None else self.qkv_bias

    @property
    def rope(self) -> Rope | None:
        """The rotary embedding of this config, or None without RoPE."""
        if self.position_embedding != "rope":
            return None
        return Rope(theta=self.rope_theta, scaling=self.rope_scaling,
                    factor=self.rope_scaling_factor, low_freq_factor=self.rope_low_freq_factor,
                    high_freq_factor=self.rope_high_freq_factor,
                    original_max_len=self.rope_original_max_len)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def mlp_hidden_dropout_rate(self) -> float:
        """The rate at which the MLP drops its hidden activations."""
        return self.dropout_rate if self.mlp_hidden_dropout else 0.0


def gpt2_config(size: str = "small", *, vocab_size: int = 50257, **overrides) -> TransformerConfig:
    """The GPT-2 family: learned positions, LayerNorm, tanh-GELU, tied embeddings."""
    shapes = {
        "small": (12, 768, 12),
        "medium": (24, 1024, 16),
        "large": (36, 1280, 20),
        "xl": (48, 1600, 25),
    }
    if size not in shapes:
        raise UserError(f"gpt2_config size={size!r} is not one of {', '.join(shapes)}.")
    layers, width, heads = shapes[size]
    fields = dict(
        vocab_size=vocab_size, num_layers=layers, embed_dim=width, num_heads=heads,
        max_len=1024, position_embedding="learned", norm="layernorm", norm_eps=1e-5,
        mlp_activation="gelu", use_bias=True, tie_embeddings=True,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def llama_style_config(*, vocab_size: int, num_layers: int, embed_dim: int, num_heads: int,
                       num_kv_heads: int, mlp_dim: int, max_len: int = 2048,
                       **overrides) -> TransformerConfig:
    """Modern decoder: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases."""
    fields = dict(
        vocab_size=vocab_size, num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads,
        num_kv_heads=num_kv_heads, mlp_dim=mlp_dim, max_len=max_len, position_embedding="rope",
        norm="rmsnorm", norm_eps=1e-6, mlp_activation="swiglu", use_bias=False,
        tie_embeddings=False,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)
