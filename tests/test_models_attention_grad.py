"""The hand-written attention backward pass equals autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.models.attention import _NEG_INF, attention_mask, softmax_attention
from llmos_jax.models.dropout import dropout


def reference_attention(q, k, v, mask, dropout_rate=0.0, dropout_key=None):
    """softmax(q k^T masked) v by autodiff-able jnp, for q [b,t,h,d] or [b,t,k,g,d]."""
    if q.ndim == 4:
        scores = jnp.einsum("bthd,bshd->bhts", q, k)
    else:
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k)
    if mask is not None:
        scores = jnp.where(mask, scores, _NEG_INF)
    probs = dropout(jax.nn.softmax(scores, axis=-1), dropout_rate, dropout_key)
    if q.ndim == 4:
        return jnp.einsum("bhts,bshd->bthd", probs, v)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v)


def _inputs(groups, kv_heads, query_len, key_len, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q_shape = ((2, query_len, kv_heads, 8) if groups == 1
               else (2, query_len, kv_heads, groups, 8))
    q = jax.random.normal(keys[0], q_shape)
    k = jax.random.normal(keys[1], (2, key_len, kv_heads, 8))
    v = jax.random.normal(keys[2], (2, key_len, kv_heads, 8))
    d_out = jax.random.normal(keys[3], q_shape)
    return q, k, v, d_out


@pytest.mark.parametrize("groups,kv_heads", [(1, 4), (2, 2), (4, 1)],
                         ids=["multi-head", "grouped-query", "multi-query"])
@pytest.mark.parametrize("masking", ["causal", "packed", "none", "cross"])
def test_softmax_attention_matches_autodiff(groups, kv_heads, masking):
    """Outputs and q/k/v gradients agree with autodiff to float32 round-off."""
    query_len = key_len = 6
    mask = None
    if masking == "causal":
        mask = attention_mask(None, None, 6, 6, causal=True)
    elif masking == "packed":
        segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
        mask = attention_mask(segments, segments, 6, 6, causal=True)
    elif masking == "cross":
        key_len = 9
        mask = attention_mask(None, jnp.array([[1] * 7 + [0] * 2, [1] * 9]), 6, 9, causal=False)
    if mask is not None and groups > 1:
        mask = mask[:, :, None]
    q, k, v, d_out = _inputs(groups, kv_heads, query_len, key_len)

    def vjp(fn):
        out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
        return (out, *pullback(d_out))

    for got, want in zip(jax.jit(lambda: vjp(softmax_attention))(),
                         jax.jit(lambda: vjp(reference_attention))()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_softmax_attention_bfloat16_is_as_accurate_as_autodiff():
    """bfloat16 inputs: dtype kept; gradient error vs float32 no worse than autodiff's in bf16."""
    q, k, v, _ = _inputs(1, 4, 6, 6)
    mask = attention_mask(None, None, 6, 6, causal=True)

    def grads(fn, *args):
        def loss(q, k, v):
            return jnp.sum(fn(q, k, v, mask).astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))(*args)

    exact = grads(reference_attention, q, k, v)
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    assert softmax_attention(*bf16, mask).dtype == jnp.bfloat16
    ours, autodiff = grads(softmax_attention, *bf16), grads(reference_attention, *bf16)
    for mine, theirs, want in zip(ours, autodiff, exact):
        assert mine.dtype == jnp.bfloat16
        error = float(jnp.max(jnp.abs(mine.astype(jnp.float32) - want)))
        autodiff_error = float(jnp.max(jnp.abs(theirs.astype(jnp.float32) - want)))
        assert error <= 2 * autodiff_error + 1e-2, (error, autodiff_error)


@pytest.mark.parametrize("groups,kv_heads", [(1, 4), (2, 2)], ids=["multi-head", "grouped-query"])
def test_softmax_attention_with_dropout_matches_autodiff(groups, kv_heads):
    """Dropout on the probabilities: the same mask as `dropout()`, and autodiff's gradients."""
    mask = attention_mask(None, None, 6, 6, causal=True)
    if groups > 1:
        mask = mask[:, :, None]
    q, k, v, d_out = _inputs(groups, kv_heads, 6, 6)
    key = jax.random.key(7)

    def vjp(fn):
        out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, mask, 0.25, key), q, k, v)
        return (out, *pullback(d_out))

    got, want = jax.jit(lambda: vjp(softmax_attention))(), jax.jit(lambda: vjp(reference_attention))()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Dropout did something: some output differs from the no-dropout one.
    assert not np.allclose(got[0], softmax_attention(q, k, v, mask))
