"""The T5-style encoder-decoder: shapes, masks, relative buckets, sharded parity."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sharding_helpers import sharded_copy

from llmos_jax.errors import UserError
from llmos_jax.models import EncoderDecoderLM, t5_config
from llmos_jax.models.relative_position import relative_position_buckets

CONFIG = t5_config("1.1", vocab_size=40, num_layers=2, num_decoder_layers=2, embed_dim=32,
                   num_heads=4, head_dim=8, mlp_dim=48, relative_buckets=8,
                   relative_max_distance=16, dropout_rate=0.0)
RNG = np.random.default_rng(0)
ENCODER_TOKENS = jnp.asarray(RNG.integers(2, 40, size=(4, 9)))
DECODER_TOKENS = jnp.asarray(RNG.integers(2, 40, size=(4, 6)))


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_logits_shape(version):
    config = dataclasses.replace(CONFIG, mlp_activation="relu" if version == "1.0" else "geglu",
                                 tie_embeddings=version == "1.0")
    model = EncoderDecoderLM(config, rngs=nnx.Rngs(0))
    assert (model.lm_head is None) == (version == "1.0")
    assert model(ENCODER_TOKENS, DECODER_TOKENS).shape == (4, 6, 40)


def test_encoder_padding_is_ignored_and_decoder_is_causal():
    model = EncoderDecoderLM(CONFIG, rngs=nnx.Rngs(0))
    mask = jnp.asarray(np.where(np.arange(9) < 5, 1, 0)[None].repeat(4, 0))
    other_pad = ENCODER_TOKENS.at[:, 5:].set(3)
    full = model(ENCODER_TOKENS, DECODER_TOKENS, encoder_segment_ids=mask)
    np.testing.assert_allclose(model(other_pad, DECODER_TOKENS, encoder_segment_ids=mask), full,
                               atol=1e-5)
    np.testing.assert_allclose(model(ENCODER_TOKENS[:, :5], DECODER_TOKENS), full, atol=1e-5)
    changed_future = DECODER_TOKENS.at[:, 4:].set(7)
    prefix = model(ENCODER_TOKENS, changed_future, encoder_segment_ids=mask)[:, :4]
    np.testing.assert_allclose(prefix, full[:, :4], atol=1e-5)


def test_relative_buckets_are_exact_near_and_logarithmic_far():
    both = np.asarray(relative_position_buckets(1, 40, bidirectional=True, num_buckets=32,
                                                max_distance=128))[0]
    assert list(both[:8]) == [0, 17, 18, 19, 20, 21, 22, 23]  # keys after the query: upper half
    assert both[39] < 32 and (np.diff(both[1:]) >= 0).all()
    causal = np.asarray(relative_position_buckets(40, 1, bidirectional=False, num_buckets=32,
                                                  max_distance=128))[:, 0]
    assert list(causal[:16]) == list(range(16)) and causal[-1] < 32


def test_config_rejects_absolute_positions():
    with pytest.raises(UserError, match="position_embedding"):
        dataclasses.replace(CONFIG, position_embedding="learned")


def test_sharded_equals_unsharded():
    reference = EncoderDecoderLM(CONFIG, rngs=nnx.Rngs(0))
    model, _ = sharded_copy(lambda shard: EncoderDecoderLM(CONFIG, rngs=nnx.Rngs(1), shard=shard),
                            reference)
    encoder_tokens = jnp.asarray(RNG.integers(2, 40, size=(8, 9)))
    decoder_tokens = jnp.asarray(RNG.integers(2, 40, size=(8, 6)))
    mask = jnp.ones_like(encoder_tokens).at[::2, 6:].set(0)
    forward = nnx.jit(lambda m, e, d, s: m(e, d, encoder_segment_ids=s))
    ours = forward(model, encoder_tokens, decoder_tokens, mask)
    expected = reference(encoder_tokens, decoder_tokens, encoder_segment_ids=mask)
    assert float(jnp.max(jnp.abs(ours - expected))) < 1e-5


def test_each_decoder_residual_branch_is_dropped_once(monkeypatch):
    """Self-attention, cross-attention and MLP outputs are each dropped once, not twice."""
    import jax

    from llmos_jax.models import attention, encoder_decoder, mlp
    from llmos_jax.models.axes import no_sharding
    from llmos_jax.models.dropout import dropout as real_dropout

    residual_drops = []

    def spy(x, rate, key):
        if key is not None and rate > 0 and x.shape == (2, 5, CONFIG.embed_dim):
            residual_drops.append(rate)
        return real_dropout(x, rate, key)

    for module in (attention, encoder_decoder, mlp):
        monkeypatch.setattr(module, "dropout", spy)
    config = dataclasses.replace(CONFIG, dropout_rate=0.1)
    block = encoder_decoder.CrossAttentionDecoderBlock(config, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 5, config.embed_dim))
    encoded = jnp.ones((2, 7, config.embed_dim))
    bias = jnp.zeros((1, config.num_heads, 5, 5))
    block(x, encoded=encoded, positions=jnp.arange(5)[None].repeat(2, 0), segment_ids=None,
          encoder_segment_ids=None, bias=bias, config=config, shard=no_sharding,
          dropout_key=jax.random.key(0))
    assert residual_drops == [0.1, 0.1, 0.1]


def test_packed_pairs_equal_each_pair_alone():
    """Two (input, target) pairs packed in one row give each pair's own logits."""
    model = EncoderDecoderLM(CONFIG, rngs=nnx.Rngs(0))
    inputs = [RNG.integers(2, 40, size=5), RNG.integers(2, 40, size=3)]
    targets = [RNG.integers(2, 40, size=4), RNG.integers(2, 40, size=3)]
    packed_inputs = jnp.asarray(np.concatenate(inputs + [np.zeros(2, int)]))[None]
    packed_targets = jnp.asarray(np.concatenate(targets + [np.zeros(1, int)]))[None]
    encoder_segments = jnp.asarray([[1] * 5 + [2] * 3 + [0] * 2])
    decoder_segments = jnp.asarray([[1] * 4 + [2] * 3 + [0]])
    packed = model(packed_inputs, packed_targets, encoder_segment_ids=encoder_segments,
                   decoder_segment_ids=decoder_segments)[0]
    first = model(jnp.asarray(inputs[0])[None], jnp.asarray(targets[0])[None])[0]
    second = model(jnp.asarray(inputs[1])[None], jnp.asarray(targets[1])[None])[0]
    np.testing.assert_allclose(packed[:4], first, atol=1e-5)
    np.testing.assert_allclose(packed[4:7], second, atol=1e-5)


@pytest.mark.parametrize("hidden_dropout", [True, False])
def test_t5_drops_mlp_hidden_activations_when_configured(monkeypatch, hidden_dropout):
    """T5's DenseReluDense drops its hidden activations; BERT/GPT-2 (the default) do not."""
    import jax

    from llmos_jax.models import mlp
    from llmos_jax.models.axes import no_sharding
    from llmos_jax.models.dropout import dropout as real_dropout

    hidden_drops = []

    def spy(x, rate, key):
        if key is not None and rate > 0 and x.shape[-1] == CONFIG.mlp_dim:
            hidden_drops.append(rate)
        return real_dropout(x, rate, key)

    monkeypatch.setattr(mlp, "dropout", spy)
    assert t5_config("1.0").mlp_hidden_dropout and t5_config("1.1").mlp_hidden_dropout
    config = dataclasses.replace(CONFIG, dropout_rate=0.1, mlp_hidden_dropout=hidden_dropout,
                                 scan_layers=False)  # One traced call per layer.
    model = EncoderDecoderLM(config, rngs=nnx.Rngs(0))
    model(ENCODER_TOKENS, DECODER_TOKENS, dropout_key=jax.random.key(0))
    assert hidden_drops == ([0.1] * (config.num_layers + config.num_decoder_layers)
                            if hidden_dropout else [])
