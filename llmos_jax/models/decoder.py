"""A decoder-only Transformer language model in Flax NNX.

Pre-norm blocks (norm -> attention -> residual, norm -> MLP -> residual), as in
GPT-2 and Llama. Sublayers come from `llmos_jax.models.builders` and the
stack from `llmos_jax.models.layer_stack`, as in the encoder families: with
`scan_layers`, the blocks' parameters are stacked along a leading `layers`
axis and run by `jax.lax.scan` (compile time does not grow with depth,
unrolled on CPU); each block can be rematerialised in the backward pass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.attention import cached_attention_mask
from llmos_jax.models.builders import attention_for, lm_head_for, mlp_for, norm_for
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.dropout import dropout, split_key
from llmos_jax.models.embeddings import PositionEmbedding, TokenEmbedding
from llmos_jax.models.layer_stack import make_blocks, run_blocks


class DecoderBlock(nnx.Module):
    """One pre-norm Transformer block."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.attn_norm = norm_for(config, rngs)
        self.attn = attention_for(config, rngs)
        self.mlp_norm = norm_for(config, rngs)
        self.mlp = mlp_for(config, rngs)

    def __call__(self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None,
                 config: TransformerConfig, shard: axes.ActivationSharder,
                 dropout_key: jax.Array | None) -> jax.Array:
        attn_key, mlp_key = split_key(dropout_key, 2)
        residual_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)
        x = x + self.attn(self.attn_norm(x), positions=positions, segment_ids=segment_ids,
                          rope_theta=config.rope, shard=shard, dropout_rate=config.dropout_rate,
                          dropout_key=attn_key, sliding_window=config.sliding_window)
        x = shard(x, residual_axes)
        x = x + self.mlp(self.mlp_norm(x), shard=shard, dropout_rate=config.dropout_rate,
                         dropout_key=mlp_key,
                         hidden_dropout_rate=config.mlp_hidden_dropout_rate)
        return shard(x, residual_axes)

    def extend(self, x: jax.Array, *, keys: jax.Array, values: jax.Array,
               write_index: jax.Array, mask: jax.Array, positions: jax.Array,
               config: TransformerConfig, shard: axes.ActivationSharder,
               read_len: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`__call__` (without dropout) for new tokens over this layer's KV cache."""
        residual_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)
        h, keys, values = self.attn.attend_cached(
            self.attn_norm(x), keys=keys, values=values, write_index=write_index, mask=mask,
            positions=positions, rope_theta=config.rope, shard=shard, read_len=read_len)
        x = shard(x + h, residual_axes)
        x = x + self.mlp(self.mlp_norm(x), shard=shard)
        return shard(x, residual_axes), keys, values


class DecoderLM(nnx.Module):
    """Decoder-only language model: tokens [batch, length] -> logits [batch, length, vocab].

    Args:
      config: The architecture.
      rngs: Initialisation randomness (`rngs.params`).
      shard: How activations are laid out on a mesh, given their logical axis
        names. The default leaves layout to the compiler; training passes a
        `llmos_jax.partitioning.LogicalSharder`.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                 shard: axes.ActivationSharder = axes.no_sharding):
        self.config = config
        self.shard = shard
        self.token_embed = TokenEmbedding(config.vocab_size, config.embed_dim,
                                          init_std=config.init_std,
                                          param_dtype=config.storage_dtype, rngs=rngs)
        self.pos_embed = (
            PositionEmbedding(config.max_len, config.embed_dim, init_std=config.init_std,
                              param_dtype=config.storage_dtype, rngs=rngs)
            if config.position_embedding == "learned" else None
        )
        self.layers = make_blocks(lambda r: DecoderBlock(config, rngs=r), config.num_layers,
                                  scan=config.scan_layers, rngs=rngs)
        self.final_norm = norm_for(config, rngs)
        self.lm_head = lm_head_for(config, rngs)

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits in float32.

        Args:
          tokens: int [batch, length] input ids.
          positions: int [batch, length]; defaults to 0..length-1. Packed
            examples pass positions that restart at each document.
          segment_ids: int [batch, length]; tokens attend only within their
            segment (packed documents). None means one document per row.
          dropout_key: Enables dropout; derive it from (seed, step) so that
            resumed runs reproduce it.
        """
        config = self.config
        batch, length = tokens.shape
        if length > config.max_len and config.position_embedding == "learned":
            raise ValueError(f"sequence length {length} exceeds TransformerConfig.max_len={config.max_len}")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        embed_key, layers_key = split_key(dropout_key, 2)
        x = self._embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions, config.compute_dtype, self.shard)
        x = dropout(x, config.dropout_rate, embed_key)
        x = self.shard(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        x = self._run_layers(x, positions, segment_ids, layers_key)
        return self.logits(self.final_norm(x))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Vocabulary logits in float32 from final-norm hidden states [..., embed]."""
        if self.lm_head is None:
            logits = self.token_embed.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        logits = self.shard(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB))
        return logits.astype(jnp.float32)

    def extend(self, tokens: jax.Array, *, positions: jax.Array,
               keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...],
               write_index: jax.Array, key_valid: jax.Array, read_len: int | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Runs new tokens over a KV cache: the decoding counterpart of `__call__`.

        Prefill passes the whole (left-padded) prompt at `write_index=0`; each
        decoding step passes one token. Needs unstacked layers (`scan_layers`
        False): `llmos_jax.inference` unstacks a scanned model's parameters once
        before decoding, so no per-step slicing of stacked weights happens.

        Args:
          tokens: int [batch, t] new tokens, written at slots
            `write_index ... write_index + t - 1`.
          positions: int [batch, t] their positions (slot minus the row's
            padding, for left-padded prompts).
          keys, values: One [batch, slots, kv_heads, head_dim] cache per layer.
          write_index: int scalar, or int [batch] when each row writes at its
            own slot (the serving engine's slots; masking then follows each row).
          key_valid: bool [batch, slots]; False marks padding slots.
          read_len: Static; attend over the first `read_len` slots only (every new
            token's slot must be below it). None: all.

        Returns:
          Final-norm hidden states [batch, t, embed] (see `logits`) and the
          updated caches.
        """
        config = self.config
        if config.scan_layers:
            raise ValueError("DecoderLM.extend needs unstacked layers; decode through "
                             "llmos_jax.inference, which unstacks scanned parameters.")
        x = self._embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions, config.compute_dtype, self.shard)
        x = self.shard(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        if read_len is not None:
            key_valid = key_valid[:, :read_len]
        mask = cached_attention_mask(key_valid, write_index, tokens.shape[1],
                                     config.sliding_window)
        new_keys, new_values = [], []
        for block, layer_keys, layer_values in zip(self.layers, keys, values):
            x, layer_keys, layer_values = block.extend(
                x, keys=layer_keys, values=layer_values, write_index=write_index, mask=mask,
                positions=positions, config=config, shard=self.shard, read_len=read_len)
            new_keys.append(layer_keys)
            new_values.append(layer_values)
        return self.final_norm(x), tuple(new_keys), tuple(new_values)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings, times sqrt(embed_dim) with `scale_embeddings` (Gemma)."""
        x = self.token_embed(tokens, self.config.compute_dtype, self.shard)
        if self.config.scale_embeddings:
            x = x * jnp.asarray(math.sqrt(self.config.embed_dim), x.dtype)
        return x

    def _run_layers(self, x, positions, segment_ids, key):
        config, shard = self.config, self.shard

        def apply_block(block: DecoderBlock, h, layer_key):
            return block(h, positions=positions, segment_ids=segment_ids, config=config,
                         shard=shard, dropout_key=layer_key)

        return run_blocks(self.layers, x, apply_block, num_layers=config.num_layers,
                          scan=config.scan_layers, remat_policy=config.remat_policy,
                          dropout_key=key)
