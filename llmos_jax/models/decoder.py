"""A decoder-only Transformer language model in Flax NNX.

Pre-norm blocks (norm -> attention -> residual, norm -> MLP -> residual), as in
GPT-2 and Llama. With `scan_layers`, the blocks' parameters are stacked along a
leading `layers` axis and run by `jax.lax.scan`, so compile time does not grow
with depth; each block can be rematerialised in the backward pass.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.attention import SelfAttention, cached_attention_mask
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.dense import Dense
from llmos_jax.models.dropout import dropout, split_key
from llmos_jax.models.embeddings import PositionEmbedding, TokenEmbedding
from llmos_jax.models.mlp import Mlp
from llmos_jax.models.norms import Norm

_REMAT_POLICIES: dict[str, Callable | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _norm(config: TransformerConfig, rngs: nnx.Rngs) -> Norm:
    return Norm(config.embed_dim, kind=config.norm, eps=config.norm_eps,
                use_bias=config.use_bias, param_dtype=config.storage_dtype, rngs=rngs)


class DecoderBlock(nnx.Module):
    """One pre-norm Transformer block."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        out_std = config.init_std / math.sqrt(2 * config.num_layers)
        self.attn_norm = _norm(config, rngs)
        self.attn = SelfAttention(
            config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
            use_bias=config.use_bias, init_std=config.init_std, out_init_std=out_std,
            impl=config.attention_impl, param_dtype=config.storage_dtype, rngs=rngs)
        self.mlp_norm = _norm(config, rngs)
        self.mlp = Mlp(config.embed_dim, config.mlp_dim, activation=config.mlp_activation,
                       gated=config.gated_mlp, use_bias=config.use_bias,
                       init_std=config.init_std, out_init_std=out_std,
                       param_dtype=config.storage_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None,
                 config: TransformerConfig, shard: axes.ActivationSharder,
                 dropout_key: jax.Array | None) -> jax.Array:
        attn_key, mlp_key = split_key(dropout_key, 2)
        rope_theta = config.rope_theta if config.position_embedding == "rope" else None
        residual_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)
        x = x + self.attn(self.attn_norm(x), positions=positions, segment_ids=segment_ids,
                          rope_theta=rope_theta, shard=shard, dropout_rate=config.dropout_rate,
                          dropout_key=attn_key)
        x = shard(x, residual_axes)
        x = x + self.mlp(self.mlp_norm(x), shard=shard, dropout_rate=config.dropout_rate,
                         dropout_key=mlp_key,
                         hidden_dropout_rate=config.mlp_hidden_dropout_rate)
        return shard(x, residual_axes)

    def extend(self, x: jax.Array, *, keys: jax.Array, values: jax.Array,
               write_index: jax.Array, mask: jax.Array, positions: jax.Array,
               config: TransformerConfig,
               shard: axes.ActivationSharder) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`__call__` (without dropout) for new tokens over this layer's KV cache."""
        rope_theta = config.rope_theta if config.position_embedding == "rope" else None
        residual_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)
        h, keys, values = self.attn.attend_cached(
            self.attn_norm(x), keys=keys, values=values, write_index=write_index, mask=mask,
            positions=positions, rope_theta=rope_theta, shard=shard)
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
        if config.scan_layers:
            self.layers = _stacked_blocks(config, rngs)
        else:
            self.layers = nnx.List([DecoderBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = _norm(config, rngs)
        self.lm_head = (
            None if config.tie_embeddings else
            Dense((config.embed_dim,), (config.vocab_size,), (axes.EMBED,), (axes.VOCAB,),
                  use_bias=False, init_std=config.init_std,
                  param_dtype=config.storage_dtype, rngs=rngs)
        )

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
        x = self.token_embed(tokens, config.compute_dtype, self.shard)
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
               write_index: jax.Array, key_valid: jax.Array
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
          write_index: int scalar.
          key_valid: bool [batch, slots]; False marks padding slots.

        Returns:
          Final-norm hidden states [batch, t, embed] (see `logits`) and the
          updated caches.
        """
        config = self.config
        if config.scan_layers:
            raise ValueError("DecoderLM.extend needs unstacked layers; decode through "
                             "llmos_jax.inference, which unstacks scanned parameters.")
        x = self.token_embed(tokens, config.compute_dtype, self.shard)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions, config.compute_dtype, self.shard)
        x = self.shard(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        mask = cached_attention_mask(key_valid, write_index, tokens.shape[1])
        new_keys, new_values = [], []
        for block, layer_keys, layer_values in zip(self.layers, keys, values):
            x, layer_keys, layer_values = block.extend(
                x, keys=layer_keys, values=layer_values, write_index=write_index, mask=mask,
                positions=positions, config=config, shard=self.shard)
            new_keys.append(layer_keys)
            new_values.append(layer_values)
        return self.final_norm(x), tuple(new_keys), tuple(new_values)

    def _run_layers(self, x, positions, segment_ids, key):
        config, shard = self.config, self.shard

        def apply_block(block: DecoderBlock, x, layer_key):
            return block(x, positions=positions, segment_ids=segment_ids, config=config,
                         shard=shard, dropout_key=layer_key)

        keys = (jnp.stack(split_key(key, config.num_layers)) if key is not None else None)
        if not config.scan_layers:
            for i, block in enumerate(self.layers):
                step = (nnx.remat(apply_block, policy=_REMAT_POLICIES[config.remat_policy])
                        if config.remat_policy != "none" else apply_block)
                x = step(block, x, None if keys is None else keys[i])
            return x

        graphdef, state = nnx.split(self.layers)

        def body(carry, scanned):
            layer_state, layer_key = scanned
            return apply_block(nnx.merge(graphdef, layer_state), carry, layer_key), None

        if config.remat_policy != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[config.remat_policy],
                                  prevent_cse=False)
        x, _ = jax.lax.scan(body, x, (state, keys), unroll=layer_scan_unroll(config.num_layers))
        return x


# Deepest stack that is unrolled on CPU. Unrolling costs compile time roughly
# linear in depth; CPU-sized models are shallow.
_CPU_UNROLL_MAX_LAYERS = 48


def layer_scan_unroll(num_layers: int) -> int:
    """How many stacked layers one iteration of the layer scan runs.

    On CPU the whole stack is unrolled: the parameter layout stays stacked
    (a leading `layers` axis), but XLA:CPU then runs straight-line code
    instead of a while loop that zero-fills and copies the stacked
    residuals and gradients every step (a third of a small model's step time,
    see docs/performance.md). Elsewhere the loop stays rolled, so compile time
    does not grow with depth.
    """
    if jax.default_backend() == "cpu" and num_layers <= _CPU_UNROLL_MAX_LAYERS:
        return max(num_layers, 1)
    return 1


def _stacked_blocks(config: TransformerConfig, rngs: nnx.Rngs) -> DecoderBlock:
    """`num_layers` blocks with parameters stacked on a leading `layers` axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def make_block(rngs: nnx.Rngs) -> DecoderBlock:
        return DecoderBlock(config, rngs=rngs)

    return make_block(rngs)
