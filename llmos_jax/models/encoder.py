"""A BERT-style bidirectional Transformer encoder.

Token + learned position + token-type (sentence A/B) embeddings and an
embedding LayerNorm, then blocks of unmasked (bidirectional) self-attention
and MLP. BERT places the norm after each residual add ("post"); "pre" gives
the more stable pre-norm variant with a final norm. Padding is expressed like
packing: `segment_ids` with 0 for padding, so an HF `attention_mask` can be
passed as is. Task heads live in `llmos_jax.models.heads`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.builders import dense_for, norm_for
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.dropout import dropout, split_key
from llmos_jax.models.embeddings import PositionEmbedding, TokenEmbedding
from llmos_jax.models.encoder_block import EncoderBlock
from llmos_jax.models.layer_stack import make_blocks, run_blocks

NormPlacement = Literal["post", "pre"]
_RESIDUAL = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)


@dataclasses.dataclass(frozen=True)
class EncoderConfig(TransformerConfig):
    """A `TransformerConfig` plus the few fields only encoders have.

    Subclassing (rather than wrapping) keeps every shared field, its
    validation and the gin bindings in one place; the decoder never sees
    these fields.

    Attributes:
      type_vocab_size: Rows of the token-type (segment A/B) table; 0 for none.
      norm_placement: "post" (BERT: norm after each residual add) or "pre".
      pooler: Build BERT's pooler (dense + tanh on the first, [CLS], token),
        used by the NSP head and [CLS] sequence classification.
    """

    type_vocab_size: int = 2
    norm_placement: NormPlacement = "post"
    pooler: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm_placement not in ("post", "pre"):
            raise UserError(f"EncoderConfig.norm_placement={self.norm_placement!r} is not one of "
                            "post, pre; set it in your model gin file.")
        if self.type_vocab_size < 0:
            raise UserError(f"EncoderConfig.type_vocab_size must be >= 0, got {self.type_vocab_size}.")


def bert_config(*, vocab_size: int = 30522, num_layers: int = 12, embed_dim: int = 768,
                num_heads: int = 12, mlp_dim: int | None = None, max_len: int = 512,
                **overrides) -> EncoderConfig:
    """BERT: learned positions, post-LN LayerNorm (eps 1e-12), exact GELU, biases."""
    fields = dict(
        vocab_size=vocab_size, num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads,
        mlp_dim=mlp_dim, max_len=max_len, position_embedding="learned", norm="layernorm",
        norm_eps=1e-12, mlp_activation="gelu_exact", use_bias=True, tie_embeddings=True,
        dropout_rate=0.1, type_vocab_size=2, norm_placement="post", pooler=True,
    )
    fields.update(overrides)
    return EncoderConfig(**fields)


class Encoder(nnx.Module):
    """tokens [batch, length] -> hidden states [batch, length, embed] (BERT's BertModel).

    Args:
      config: The architecture.
      rngs: Initialisation randomness.
      shard: Activation layout on a mesh (a `LogicalSharder` when sharded).
    """

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs,
                 shard: axes.ActivationSharder = axes.no_sharding):
        self.config = config
        self.shard = shard
        common = dict(init_std=config.init_std, param_dtype=config.storage_dtype, rngs=rngs)
        self.token_embed = TokenEmbedding(config.vocab_size, config.embed_dim, **common)
        self.pos_embed = (PositionEmbedding(config.max_len, config.embed_dim, **common)
                          if config.position_embedding == "learned" else None)
        self.token_type_embed = (
            TokenEmbedding(config.type_vocab_size, config.embed_dim, row_axis=axes.SEGMENT_TYPES,
                           **common)
            if config.type_vocab_size else None)
        self.embed_norm = norm_for(config, rngs)
        post_norm = config.norm_placement == "post"
        self.layers = make_blocks(lambda r: EncoderBlock(config, post_norm=post_norm, rngs=r),
                                  config.num_layers, scan=config.scan_layers, rngs=rngs)
        self.final_norm = None if post_norm else norm_for(config, rngs)
        self.pooler = (dense_for(config, rngs, config.embed_dim, config.embed_dim, axes.EMBED,
                                 axes.EMBED)
                       if config.pooler else None)

    def __call__(self, tokens: jax.Array, *, token_type_ids: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Hidden states of the last block, in the compute dtype.

        Args:
          tokens: int [batch, length].
          token_type_ids: int [batch, length] sentence A/B ids; default 0.
          segment_ids: int [batch, length]; tokens attend only within their
            segment and 0 marks padding (an HF attention_mask works as is).
          positions: int [batch, length]; default 0..length-1.
          dropout_key: Enables dropout.
        """
        config, shard = self.config, self.shard
        batch, length = tokens.shape
        if self.pos_embed is not None and length > config.max_len:
            raise UserError(f"sequence length {length} exceeds EncoderConfig.max_len="
                            f"{config.max_len}; truncate inputs or raise max_len.")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        embed_key, layers_key = split_key(dropout_key, 2)
        dtype = config.compute_dtype
        x = self.token_embed(tokens, dtype, shard)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions, dtype, shard)
        if self.token_type_embed is not None:
            types = jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids
            x = x + self.token_type_embed(types, dtype, shard)
        x = dropout(self.embed_norm(x), config.dropout_rate, embed_key)
        x = shard(x, _RESIDUAL)

        def apply_block(block, h, key):
            return block(h, positions=positions, segment_ids=segment_ids, config=config,
                         shard=shard, dropout_key=key)

        x = run_blocks(self.layers, x, apply_block, num_layers=config.num_layers,
                       scan=config.scan_layers, remat_policy=config.remat_policy,
                       dropout_key=layers_key)
        return x if self.final_norm is None else self.final_norm(x)

    def pool(self, hidden: jax.Array) -> jax.Array:
        """BERT's pooled output: tanh(dense(hidden of the first token)), [batch, embed]."""
        if self.pooler is None:
            raise UserError("this Encoder has no pooler; set EncoderConfig.pooler=True "
                            "(needed by the NSP head and [CLS] classification).")
        return jnp.tanh(self.pooler(hidden[:, 0]))
