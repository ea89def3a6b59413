"""Model FLOPs per token of each family's architecture: the numerator of MFU.

MFU (model FLOPs utilisation) counts only the FLOPs the model mathematically
needs, not what the implementation executes (rematerialisation, padding and
fused kernels do not change it), so runs with different code stay comparable.
The convention is written out with a worked example in ``docs/mfu.md``.

The formulas are plain arithmetic on a model config, so they live with the
models: each `llmos_jax.models.families.ModelFamily` names its formula, and
`llmos_jax.monitoring.flops.mfu` divides by the hardware peak.
"""

from llmos_jax.errors import UserError
from llmos_jax.models.config import TransformerConfig

# Backward pass = 2 x forward (gradients w.r.t. activations and w.r.t. weights).
TRAINING_TO_FORWARD_RATIO = 3
# A multiply-accumulate is 2 FLOPs.
FLOPS_PER_MULTIPLY_ADD = 2


def decoder_training_flops_per_token(
    *,
    num_layers: int,
    embed_dim: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    mlp_dim: int,
    vocab_size: int,
    seq_len: int,
    gated_mlp: bool,
    causal: bool = True,
) -> float:
    """Training FLOPs (forward + backward) per token of a decoder-only Transformer.

    Convention: training FLOPs = 3 x forward FLOPs. Forward FLOPs are

    * matmuls: 2 x the weights a token is multiplied with. Per layer: q proj
      ``embed_dim*num_heads*head_dim``, k and v proj
      ``2*embed_dim*num_kv_heads*head_dim``, out proj
      ``num_heads*head_dim*embed_dim``, MLP ``(3 if gated_mlp else 2)*embed_dim*mlp_dim``;
      plus the LM head ``embed_dim*vocab_size`` once (counted even when tied to
      the embedding; the embedding lookup itself is not a matmul);
    * attention scores, per layer: ``QK^T`` ``2*seq_len*num_heads*head_dim``
      plus ``AV`` ``2*seq_len*num_heads*head_dim``. This is the PaLM-appendix
      count, halved when ``causal`` because a token attends on average to half
      of the context.

    Norms, softmax, activations and biases are excluded. Per token this gives
    ``6*N_matmul + 12*num_layers*seq_len*num_heads*head_dim*(0.5 if causal else 1)``.

    Raises:
        UserError: a dimension is not a positive integer.
    """
    dims = dict(
        num_layers=num_layers,
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        mlp_dim=mlp_dim,
        vocab_size=vocab_size,
        seq_len=seq_len,
    )
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(
                f"FLOPs formula: {name}={value!r} must be a positive integer; "
                "fix the model or data config."
            )

    q_proj = embed_dim * num_heads * head_dim
    kv_proj = 2 * embed_dim * num_kv_heads * head_dim
    out_proj = num_heads * head_dim * embed_dim
    mlp = (3 if gated_mlp else 2) * embed_dim * mlp_dim
    lm_head = embed_dim * vocab_size
    matmul_weights = num_layers * (q_proj + kv_proj + out_proj + mlp) + lm_head

    causal_fraction = 0.5 if causal else 1.0
    query_key_scores = FLOPS_PER_MULTIPLY_ADD * seq_len * num_heads * head_dim
    attention_weighted_values = FLOPS_PER_MULTIPLY_ADD * seq_len * num_heads * head_dim
    attention_forward = num_layers * (query_key_scores + attention_weighted_values) * causal_fraction
    forward = FLOPS_PER_MULTIPLY_ADD * matmul_weights + attention_forward
    return float(TRAINING_TO_FORWARD_RATIO * forward)


def decoder_config_training_flops_per_token(config: TransformerConfig,
                                            seq_len: int) -> float:
    """`decoder_training_flops_per_token` for a decoder-only model built from `config`."""
    return decoder_training_flops_per_token(
        num_layers=config.num_layers, embed_dim=config.embed_dim, num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim, mlp_dim=config.mlp_dim,
        vocab_size=config.vocab_size, seq_len=seq_len, gated_mlp=config.gated_mlp)
