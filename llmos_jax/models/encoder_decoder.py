"""A T5-style encoder-decoder Transformer (T5 v1.0 and v1.1).

Pre-norm blocks with RMSNorm (T5's LayerNorm has no mean subtraction and no
bias), no biases, unscaled attention scores (T5 folds 1/sqrt(d) into the
initialisation) plus a bucketed relative position bias computed once per
stack and shared by its layers. The decoder has causal self-attention and
cross-attention to the encoder output (padding keys masked).

v1.0: ReLU MLP, tied input/output embedding, decoder output scaled by
embed_dim**-0.5 before the tied logits. v1.1: gated-GELU MLP, separate
output projection, no scaling.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.attention import cached_attention_mask, query_slots
from llmos_jax.models.builders import attention_for, lm_head_for, mlp_for, norm_for
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.dropout import dropout, split_key
from llmos_jax.models.embeddings import TokenEmbedding
from llmos_jax.models.encoder_block import EncoderBlock
from llmos_jax.models.layer_stack import make_blocks, run_blocks
from llmos_jax.models.relative_position import RelativePositionBias

_RESIDUAL = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig(TransformerConfig):
    """A `TransformerConfig` (`num_layers` = encoder layers) plus T5's extra fields.

    Attributes:
      num_decoder_layers: Decoder depth; defaults to `num_layers`.
      relative_buckets: Buckets of the relative position bias.
      relative_max_distance: Distances beyond this share the last bucket.
      scale_attention: Scale scores by 1/sqrt(head_dim); T5 does not.
      scale_decoder_output: Multiply the decoder output by embed_dim**-0.5
        before the logits (T5 v1.0, tied embeddings).
    """

    num_decoder_layers: int | None = None
    relative_buckets: int = 32
    relative_max_distance: int = 128
    scale_attention: bool = False
    scale_decoder_output: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        if self.num_decoder_layers <= 0:
            raise UserError("EncoderDecoderConfig.num_decoder_layers must be positive, got "
                            f"{self.num_decoder_layers}.")
        if self.position_embedding != "none":
            raise UserError(
                f"EncoderDecoderConfig.position_embedding={self.position_embedding!r}: the "
                "encoder-decoder uses relative position bias only; set position_embedding='none'.")
        if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 4:
            raise UserError(
                f"EncoderDecoderConfig.relative_buckets={self.relative_buckets} and "
                f"relative_max_distance={self.relative_max_distance} are too small; T5 uses 32 "
                "and 128.")


def t5_config(version: Literal["1.0", "1.1"] = "1.1", *, vocab_size: int = 32128,
              num_layers: int = 8, embed_dim: int = 512, num_heads: int = 6,
              head_dim: int = 64, mlp_dim: int = 1024, **overrides) -> EncoderDecoderConfig:
    """T5 v1.0 (ReLU, tied + scaled output) or v1.1 (gated GELU, untied)."""
    if version not in ("1.0", "1.1"):
        raise UserError(f"t5_config version={version!r} is not one of 1.0, 1.1.")
    v1_0 = version == "1.0"
    fields = dict(
        vocab_size=vocab_size, num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads,
        head_dim=head_dim, mlp_dim=mlp_dim, position_embedding="none", norm="rmsnorm",
        norm_eps=1e-6, mlp_activation="relu" if v1_0 else "geglu", use_bias=False,
        tie_embeddings=v1_0, scale_decoder_output=v1_0, dropout_rate=0.1,
        mlp_hidden_dropout=True,
    )
    fields.update(overrides)
    return EncoderDecoderConfig(**fields)


class CrossAttentionDecoderBlock(nnx.Module):
    """Causal self-attention, cross-attention to the encoder, then MLP; pre-norm."""

    def __init__(self, config: EncoderDecoderConfig, *, rngs: nnx.Rngs):
        scale = config.scale_attention
        self.self_attn_norm = norm_for(config, rngs)
        self.self_attn = attention_for(config, rngs, scale_queries=scale)
        self.cross_attn_norm = norm_for(config, rngs)
        self.cross_attn = attention_for(config, rngs, scale_queries=scale)
        self.mlp_norm = norm_for(config, rngs)
        self.mlp = mlp_for(config, rngs)

    def __call__(self, x: jax.Array, *, encoded: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array | None, encoder_segment_ids: jax.Array | None,
                 bias: jax.Array, config: EncoderDecoderConfig, shard: axes.ActivationSharder,
                 dropout_key: jax.Array | None) -> jax.Array:
        self_key, cross_key, mlp_key = split_key(dropout_key, 3)
        common = dict(positions=positions, rope_theta=None, shard=shard,
                      dropout_rate=config.dropout_rate)
        x = x + self.self_attn(self.self_attn_norm(x), segment_ids=segment_ids, causal=True,
                               bias=bias, dropout_key=self_key, **common)
        x = shard(x, _RESIDUAL)
        x = x + self.cross_attn(self.cross_attn_norm(x), segment_ids=segment_ids, causal=False,
                                context=encoded, context_segment_ids=encoder_segment_ids,
                                dropout_key=cross_key, **common)
        x = shard(x, _RESIDUAL)
        # `Mlp` drops its output once; a second dropout here would drop 19% at rate 0.1.
        h = self.mlp(self.mlp_norm(x), shard=shard, dropout_rate=config.dropout_rate,
                     dropout_key=mlp_key, hidden_dropout_rate=config.mlp_hidden_dropout_rate)
        return shard(x + h, _RESIDUAL)

    def extend(self, x: jax.Array, *, keys: jax.Array, values: jax.Array,
               cross_keys: jax.Array, cross_values: jax.Array, write_index: jax.Array,
               self_mask: jax.Array, cross_mask: jax.Array, positions: jax.Array,
               bias: jax.Array, shard: axes.ActivationSharder
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`__call__` (without dropout) for new tokens over the caches of this layer."""
        h, keys, values = self.self_attn.attend_cached(
            self.self_attn_norm(x), keys=keys, values=values, write_index=write_index,
            mask=self_mask, positions=positions, rope_theta=None, shard=shard, bias=bias)
        x = shard(x + h, _RESIDUAL)
        x = x + self.cross_attn.attend_context(self.cross_attn_norm(x), keys=cross_keys,
                                               values=cross_values, mask=cross_mask, shard=shard)
        x = shard(x, _RESIDUAL)
        return shard(x + self.mlp(self.mlp_norm(x), shard=shard), _RESIDUAL), keys, values


class EncoderDecoderLM(nnx.Module):
    """(encoder tokens [batch, S], decoder tokens [batch, T]) -> logits [batch, T, vocab].

    Args:
      config: The architecture.
      rngs: Initialisation randomness.
      shard: Activation layout on a mesh (a `LogicalSharder` when sharded).
    """

    def __init__(self, config: EncoderDecoderConfig, *, rngs: nnx.Rngs,
                 shard: axes.ActivationSharder = axes.no_sharding):
        self.config = config
        self.shard = shard
        common = dict(init_std=config.init_std, param_dtype=config.storage_dtype, rngs=rngs)
        self.token_embed = TokenEmbedding(config.vocab_size, config.embed_dim, **common)
        relative = dict(max_distance=config.relative_max_distance, **common)
        self.encoder_relative_bias = RelativePositionBias(
            config.relative_buckets, config.num_heads, bidirectional=True, **relative)
        self.encoder_layers = make_blocks(
            lambda r: EncoderBlock(config, post_norm=False, scale_queries=config.scale_attention,
                                   rngs=r),
            config.num_layers, scan=config.scan_layers, rngs=rngs)
        self.encoder_norm = norm_for(config, rngs)
        self.decoder_relative_bias = RelativePositionBias(
            config.relative_buckets, config.num_heads, bidirectional=False, **relative)
        self.decoder_layers = make_blocks(
            lambda r: CrossAttentionDecoderBlock(config, rngs=r),
            config.num_decoder_layers, scan=config.scan_layers, rngs=rngs)
        self.decoder_norm = norm_for(config, rngs)
        self.lm_head = lm_head_for(config, rngs)

    def encode(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """Encoder output [batch, S, embed] (after its final norm).

        Args:
          tokens: int [batch, S].
          segment_ids: int [batch, S]; 0 marks padding (an HF attention_mask).
          dropout_key: Enables dropout.
        """
        return self._run_stack(tokens, self.encoder_layers, self.encoder_norm,
                               self.encoder_relative_bias, self.config.num_layers, dropout_key,
                               segment_ids=segment_ids)

    def decode(self, tokens: jax.Array, encoded: jax.Array, *,
               segment_ids: jax.Array | None = None,
               encoder_segment_ids: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """Decoder output [batch, T, embed] (after its final norm) with teacher forcing.

        Args:
          tokens: int [batch, T] decoder inputs (targets shifted right).
          encoded: `encode`'s output.
          segment_ids: int [batch, T] decoder segments; 0 marks padding.
          encoder_segment_ids: int [batch, S]; padded encoder tokens are not attended.
          dropout_key: Enables dropout.
        """
        return self._run_stack(tokens, self.decoder_layers, self.decoder_norm,
                               self.decoder_relative_bias, self.config.num_decoder_layers,
                               dropout_key, encoded=encoded, segment_ids=segment_ids,
                               encoder_segment_ids=encoder_segment_ids)

    def _run_stack(self, tokens, layers, final_norm, relative_bias, num_layers, dropout_key,
                   **block_inputs) -> jax.Array:
        """Embeds `tokens`, runs one layer stack with its position bias, final norm + dropout."""
        config, shard = self.config, self.shard
        embed_key, layers_key, out_key = split_key(dropout_key, 3)
        x = self.token_embed(tokens, config.compute_dtype, shard)
        x = shard(dropout(x, config.dropout_rate, embed_key), _RESIDUAL)
        length = tokens.shape[1]
        positions = _positions(tokens)
        bias = relative_bias(length, length)

        def apply_block(block, h, key):
            return block(h, positions=positions, bias=bias, config=config, shard=shard,
                         dropout_key=key, **block_inputs)

        x = run_blocks(layers, x, apply_block, num_layers=num_layers, scan=config.scan_layers,
                       remat_policy=config.remat_policy, dropout_key=layers_key)
        return dropout(final_norm(x), config.dropout_rate, out_key)

    def cross_keys_values(self, encoded: jax.Array
                          ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Every decoder layer's cross-attention keys and values of `encoded`, computed once.

        Needs unstacked decoder layers (see `extend_decoder`).
        """
        self._check_unstacked()
        pairs = [block.cross_attn.context_keys_values(encoded, self.shard)
                 for block in self.decoder_layers]
        return tuple(k for k, _ in pairs), tuple(v for _, v in pairs)

    def extend_decoder(self, tokens: jax.Array, *, keys: tuple[jax.Array, ...],
                       values: tuple[jax.Array, ...], cross_keys: tuple[jax.Array, ...],
                       cross_values: tuple[jax.Array, ...], write_index: jax.Array,
                       encoder_valid: jax.Array
                       ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Runs new decoder tokens over the self-attention cache: `decode`'s decoding twin.

        Args:
          tokens: int [batch, t] decoder tokens written at slots
            `write_index ... write_index + t - 1` (all rows start at slot 0).
          keys, values: One [batch, slots, kv_heads, head_dim] self-attention
            cache per decoder layer.
          cross_keys, cross_values: `cross_keys_values(encoded)`.
          write_index: int scalar, or int [batch] (each row at its own slot).
          encoder_valid: bool [batch, S]; False marks encoder padding.

        Returns:
          Final-norm decoder states [batch, t, embed] (see `logits`) and the
          updated caches.
        """
        self._check_unstacked()
        config, shard = self.config, self.shard
        x = shard(self.token_embed(tokens, config.compute_dtype, shard), _RESIDUAL)
        batch, length = tokens.shape
        slots = keys[0].shape[2]  # [batch, kv_heads, slots, head_dim]
        positions = jnp.broadcast_to(query_slots(write_index, length), (batch, length))
        # The bias of a (query, key) pair depends only on their distance: rows
        # `write_index ...` of the full slots x slots table (per row when each
        # row writes at its own slot).
        table = self.decoder_relative_bias(slots, slots)  # [1, heads, slots, slots]
        if jnp.ndim(write_index) == 0:
            bias = jax.lax.dynamic_slice_in_dim(table, write_index, length, axis=2)
        else:
            bias = jnp.take(table[0], positions, axis=1).transpose(1, 0, 2, 3)
        self_mask = cached_attention_mask(jnp.ones((batch, slots), bool), write_index, length)
        cross_mask = encoder_valid[:, None, None, :]
        new_keys, new_values = [], []
        for i, block in enumerate(self.decoder_layers):
            x, layer_keys, layer_values = block.extend(
                x, keys=keys[i], values=values[i], cross_keys=cross_keys[i],
                cross_values=cross_values[i], write_index=write_index, self_mask=self_mask,
                cross_mask=cross_mask, positions=positions, bias=bias, shard=shard)
            new_keys.append(layer_keys)
            new_values.append(layer_values)
        return self.decoder_norm(x), tuple(new_keys), tuple(new_values)

    def _check_unstacked(self) -> None:
        if self.config.scan_layers:
            raise ValueError("EncoderDecoderLM decoding needs unstacked decoder layers; decode "
                             "through llmos_jax.inference, which unstacks scanned parameters.")

    def logits(self, decoded: jax.Array) -> jax.Array:
        """Vocabulary logits in float32 from `decode`'s output."""
        if self.config.scale_decoder_output:
            decoded = decoded * jnp.asarray(self.config.embed_dim ** -0.5, decoded.dtype)
        if self.lm_head is None:
            logits = self.token_embed.attend(decoded)
        else:
            logits = self.lm_head(decoded)
        logits = self.shard(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB))
        return logits.astype(jnp.float32)

    def __call__(self, encoder_tokens: jax.Array, decoder_tokens: jax.Array, *,
                 encoder_segment_ids: jax.Array | None = None,
                 decoder_segment_ids: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits [batch, T, vocab] in float32; see `encode` and `decode`."""
        encoder_key, decoder_key = split_key(dropout_key, 2)
        encoded = self.encode(encoder_tokens, segment_ids=encoder_segment_ids,
                              dropout_key=encoder_key)
        decoded = self.decode(decoder_tokens, encoded, segment_ids=decoder_segment_ids,
                              encoder_segment_ids=encoder_segment_ids, dropout_key=decoder_key)
        return self.logits(decoded)


def _positions(tokens: jax.Array) -> jax.Array:
    batch, length = tokens.shape
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
