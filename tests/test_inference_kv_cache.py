"""Incremental decoding over the KV cache gives the full forward pass's logits at every position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from inference_helpers import jitted_forward, random_model

from llmos_jax.inference.decoding_model import (
    DecoderOnly,
    EncoderDecoder,
    with_unstacked_layers,
)
from llmos_jax.models import (
    DecoderLM,
    EncoderDecoderLM,
    TransformerConfig,
    llama_style_config,
    t5_config,
)

TOLERANCE = 1e-4
LENGTH, PREFILL = 12, 5
PADDING = (0, 3, 1)  # left padding of each row


def gpt2_like(scan_layers):
    return TransformerConfig(vocab_size=61, num_layers=2, embed_dim=32, num_heads=4, max_len=24,
                             scan_layers=scan_layers)


def llama_like(scan_layers):
    return llama_style_config(vocab_size=61, num_layers=2, embed_dim=32, num_heads=4,
                              num_kv_heads=2, mlp_dim=48, max_len=24, scan_layers=scan_layers)


def jitted(make_step_model, model):
    """`make_step_model(model)`'s prefill and step, jitted with the parameters as arguments."""
    graphdef, params = nnx.split(with_unstacked_layers(model))
    prefill = jax.jit(lambda p, *args: make_step_model(nnx.merge(graphdef, p)).prefill(*args),
                      static_argnums=3)
    step = jax.jit(lambda p, *args: make_step_model(nnx.merge(graphdef, p)).step(*args))
    return (lambda *args: prefill(params, *args)), (lambda *args: step(params, *args))


def incremental_logits(model, prompt, prompt_valid, slots):
    """Logits after prefilling `PREFILL` slots, then feeding the rest one token per step."""
    prefill, step = jitted(DecoderOnly, model)
    logits, cache = prefill(prompt[:, :PREFILL], prompt_valid[:, :PREFILL], slots)
    per_slot = [logits]
    for index in range(PREFILL, prompt.shape[1]):
        logits, cache = step(prompt[:, index], cache, jnp.int32(index))
        per_slot.append(logits)
    return np.stack([np.asarray(x) for x in per_slot], axis=1)  # slots PREFILL-1 ...


@pytest.mark.parametrize("make_config,scan_layers", [
    (gpt2_like, True), (gpt2_like, False), (llama_like, True)],
    ids=["learned-scan", "learned-unstacked", "rope-gqa-scan"])
def test_decoder_cache_matches_full_forward(make_config, scan_layers):
    model = random_model(lambda rngs: DecoderLM(make_config(scan_layers), rngs=rngs))
    rng = np.random.default_rng(0)
    rows = len(PADDING)
    tokens = rng.integers(0, 61, size=(rows, LENGTH)).astype(np.int32)
    valid = np.arange(LENGTH)[None, :] >= np.asarray(PADDING)[:, None]
    got = incremental_logits(model, jnp.asarray(tokens), jnp.asarray(valid), slots=LENGTH)
    # The full forward pass on each row alone: its real tokens only, positions from 0.
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    expected = np.asarray(jitted_forward(model)(
        jnp.asarray(tokens), positions=jnp.asarray(positions),
        segment_ids=jnp.asarray(valid.astype(np.int32))))
    for row, pad in enumerate(PADDING):
        # The incremental logits start at slot PREFILL - 1.
        np.testing.assert_allclose(got[row], expected[row, PREFILL - 1:], atol=TOLERANCE)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_t5_decoder_cache_matches_teacher_forcing(version):
    config = t5_config(version, vocab_size=61, num_layers=2, num_decoder_layers=3, embed_dim=32,
                       num_heads=4, head_dim=8, mlp_dim=48, relative_buckets=8,
                       relative_max_distance=20, dropout_rate=0.0)
    model = random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs))
    rng = np.random.default_rng(1)
    encoder = jnp.asarray(rng.integers(1, 61, size=(2, 9)), jnp.int32)
    encoder_valid = jnp.asarray(np.arange(9)[None, :] < np.array([[9], [6]]))
    decoder = jnp.asarray(rng.integers(1, 61, size=(2, 7)), jnp.int32).at[:, 0].set(0)
    prefill, step = jitted(lambda m: EncoderDecoder(m, decoder_start_id=0), model)
    logits, cache = prefill(encoder, encoder_valid, 7)
    got = [logits]
    expected = np.asarray(jitted_forward(model)(encoder, decoder,
                                                encoder_segment_ids=encoder_valid.astype(int)))
    for index in range(1, 7):
        logits, cache = step(decoder[:, index], cache, jnp.int32(index))
        got.append(logits)
    np.testing.assert_allclose(np.stack(got, axis=1), expected, atol=TOLERANCE)


def test_cache_decoding_jits_with_stacked_parameters_unstacked_once():
    model = random_model(lambda rngs: DecoderLM(gpt2_like(True), rngs=rngs))
    unstacked = with_unstacked_layers(model)
    assert not unstacked.config.scan_layers and len(unstacked.layers) == 2
    stacked_q = nnx.state(model, nnx.Param)["layers"]["attn"]["query"]["kernel"].get_value()
    np.testing.assert_array_equal(unstacked.layers[1].attn.query.kernel.get_value(), stacked_q[1])
    with pytest.raises(ValueError, match="unstacked layers"):
        model.extend(jnp.zeros((1, 1), jnp.int32), positions=jnp.zeros((1, 1), jnp.int32),
                     keys=(), values=(), write_index=jnp.int32(0),
                     key_valid=jnp.ones((1, 4), bool))


def test_cache_is_heads_major():
    """The cache is [rows, kv_heads, slots, head_dim], the layout attention's matmuls read.

    With slots before heads, XLA transposed every layer's whole cache at every
    step: greedy decoding of GPT-2 small at batch 16 on CPU ran at 163 tokens/s, not 275-300
    (benchmarks/decode_speed.py, docs/decoding_performance.md).
    """
    config = gpt2_like(False)
    model = random_model(lambda rngs: DecoderLM(config, rngs=rngs))
    rows, slots = 3, 16
    _, cache = DecoderOnly(model).prefill(jnp.ones((rows, 4), jnp.int32),
                                          jnp.ones((rows, 4), bool), slots)
    heads, head_dim = config.num_heads, config.embed_dim // config.num_heads
    assert cache.slots == slots
    assert [k.shape for k in cache.keys + cache.values] == [(rows, heads, slots, head_dim)] * 4
