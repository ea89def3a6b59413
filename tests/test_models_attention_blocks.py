"""Causal self-attention in query blocks gives the unblocked outputs and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.models.attention import (attention_mask, blocked_causal_attention,
                                        softmax_attention)


def _qkv(groups, kv_heads, length, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q_shape = ((2, length, kv_heads, 8) if groups == 1 else (2, length, kv_heads, groups, 8))
    q = jax.random.normal(keys[0], q_shape)
    k = jax.random.normal(keys[1], (2, length, kv_heads, 8))
    v = jax.random.normal(keys[2], (2, length, kv_heads, 8))
    return q, k, v, jax.random.normal(keys[3], q_shape)


@pytest.mark.parametrize("groups,kv_heads", [(1, 4), (2, 2)], ids=["multi-head", "grouped"])
@pytest.mark.parametrize("length,block", [(24, 8), (21, 8), (24, 24), (24, 0)],
                         ids=["3-blocks", "ragged-last-block", "one-block", "off"])
@pytest.mark.parametrize("packed", [False, True], ids=["causal", "causal+packed"])
def test_blocked_attention_equals_unblocked(groups, kv_heads, length, block, packed):
    segments = None
    if packed:  # documents cross block boundaries; 0 = padding at the end
        segments = jnp.asarray([[1] * 10 + [2] * (length - 13) + [0] * 3,
                                [1] * 5 + [2] * 9 + [3] * (length - 14)])
    mask = attention_mask(segments, segments, length, length, causal=True)
    if groups > 1:
        mask = mask[:, :, None]
    q, k, v, d_out = _qkv(groups, kv_heads, length)

    def vjp(fn):
        out, pullback = jax.vjp(fn, q, k, v)
        return (out, *pullback(d_out))

    want = vjp(lambda q, k, v: softmax_attention(q, k, v, mask))
    got = vjp(lambda q, k, v: blocked_causal_attention(q, k, v, mask, 0.0, None, block))
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=name)


def test_blocked_attention_skips_the_masked_blocks():
    """The compiled program multiplies fewer scores: (n + 1) / 2n of them for n blocks."""
    q, k, v, _ = _qkv(1, 2, 64)
    mask = attention_mask(None, None, 64, 64, causal=True)

    def flops(block):
        fn = jax.jit(lambda q, k, v: blocked_causal_attention(q, k, v, mask, 0.0, None, block))
        return fn.lower(q, k, v).compile().cost_analysis()["flops"]

    full, four_blocks = flops(0), flops(16)
    assert 0.55 < four_blocks / full < 0.7, (four_blocks, full)  # 5/8 of the dots


def test_blocked_attention_dropout_is_reproducible_and_active():
    q, k, v, _ = _qkv(1, 2, 32)
    mask = attention_mask(None, None, 32, 32, causal=True)
    key = jax.random.key(3)
    run = jax.jit(lambda key: blocked_causal_attention(q, k, v, mask, 0.5, key, 8))
    np.testing.assert_array_equal(run(key), run(key))
    no_dropout = blocked_causal_attention(q, k, v, mask, 0.0, None, 8)
    assert not np.allclose(run(key), no_dropout)
    assert not np.allclose(run(key), run(jax.random.key(4)))


def _model(block: int) -> DecoderLM:
    config = TransformerConfig(vocab_size=50, num_layers=2, embed_dim=32, num_heads=4,
                               num_kv_heads=2, max_len=48, position_embedding="rope",
                               norm="rmsnorm", use_bias=False, attention_query_block=block)
    return DecoderLM(config, rngs=nnx.Rngs(0))


def test_decoder_logits_and_gradients_do_not_depend_on_the_query_block():
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 50)

    def loss_and_grads(model):
        def loss(model):
            return jnp.mean(model(tokens) ** 2)
        return nnx.value_and_grad(loss)(model)

    (loss_full, grads_full), (loss_blocked, grads_blocked) = (
        loss_and_grads(_model(0)), loss_and_grads(_model(16)))
    np.testing.assert_allclose(loss_blocked, loss_full, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(nnx.state(grads_blocked)),
                    jax.tree.leaves(nnx.state(grads_full))):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_negative_query_block_is_refused():
    with pytest.raises(UserError, match="attention_query_block"):
        TransformerConfig(vocab_size=10, attention_query_block=-1)
