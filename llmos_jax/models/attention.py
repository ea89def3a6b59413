"""Multi-head self-attention with grouped-query heads, RoPE and document masks.

One module covers multi-head (num_kv_heads == num_heads), grouped-query and
multi-query (num_kv_heads == 1) attention. Query heads are grouped onto their
shared key/value head with a reshape, never by repeating K and V in memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.dense import Dense
from llmos_jax.models.dropout import dropout, split_key
from llmos_jax.models.embeddings import apply_rope

_NEG_INF = -1e30  # finite, so fully masked rows (padding) give uniform, not NaN, weights


def attention_mask(query_segments: jax.Array | None, key_segments: jax.Array | None,
                   query_len: int, key_len: int, *, causal: bool) -> jax.Array | None:
    """Boolean [batch|1, 1, query, key] mask: causal and/or same-document.

    With packed sequences, tokens attend only within their own segment; segment
    id 0 marks padding.
    """
    mask = None
    if causal:
        mask = jnp.tril(jnp.ones((query_len, key_len), dtype=bool), k=key_len - query_len)[None, None]
    if query_segments is not None and key_segments is not None:
        same = query_segments[:, None, :, None] == key_segments[:, None, None, :]
        mask = same if mask is None else jnp.logical_and(mask, same)
    return mask


class SelfAttention(nnx.Module):
    """Projections q, k, v, out with kernels [embed, heads, kv] and [heads, kv, embed]."""

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 use_bias: bool, init_std: float, out_init_std: float, impl: str,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.impl = impl
        common = dict(use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
        self.query = Dense((embed_dim,), (num_heads, head_dim), (axes.EMBED,),
                           (axes.HEADS, axes.KV), init_std=init_std, **common)
        self.key = Dense((embed_dim,), (num_kv_heads, head_dim), (axes.EMBED,),
                         (axes.KV_HEADS, axes.KV), init_std=init_std, **common)
        self.value = Dense((embed_dim,), (num_kv_heads, head_dim), (axes.EMBED,),
                           (axes.KV_HEADS, axes.KV), init_std=init_std, **common)
        self.out = Dense((num_heads, head_dim), (embed_dim,), (axes.HEADS, axes.KV),
                         (axes.EMBED,), init_std=out_init_std, **common)

    def __call__(self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None,
                 rope_theta: float | None, shard: axes.ActivationSharder,
                 dropout_rate: float = 0.0, dropout_key: jax.Array | None = None) -> jax.Array:
        head_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_KV)
        q = shard(self.query(x), head_axes)
        k = shard(self.key(x), head_axes)
        v = shard(self.value(x), head_axes)
        if rope_theta is not None:
            q = apply_rope(q, positions, rope_theta)
            k = apply_rope(k, positions, rope_theta)
        probs_key, out_key = split_key(dropout_key, 2)
        length = x.shape[1]
        mask = attention_mask(segment_ids, segment_ids, length, length, causal=True)
        if self.impl == "cudnn" and (dropout_key is None or dropout_rate == 0.0):
            y = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
        else:
            y = self._einsum_attention(q, k, v, mask, dropout_rate, probs_key)
        y = shard(y, head_axes)
        return dropout(self.out(y), dropout_rate, out_key)

    def _einsum_attention(self, q, k, v, mask, dropout_rate, key):
        batch, length, _, _ = q.shape
        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(batch, length, self.num_kv_heads, groups, self.head_dim)
        q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(mask[:, :, None], scores, _NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = dropout(probs, dropout_rate, key).astype(v.dtype)
        y = jnp.einsum("bkgts,bskd->btkgd", probs, v)
        return y.reshape(batch, length, self.num_heads, self.head_dim)
