"""The BERT-style encoder and its heads: shapes, padding masks, sharded parity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sharding_helpers import sharded_copy

from llmos_jax.errors import UserError
from llmos_jax.models import (Encoder, EncoderForPreTraining, EncoderForSequenceClassification,
                              EncoderForTokenClassification, bert_config)

CONFIG = bert_config(vocab_size=40, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=48,
                     max_len=16, dropout_rate=0.0)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 40, size=(4, 10)))


def padded(length: int):
    """Segment ids with the last `10 - length` tokens of every row as padding."""
    return jnp.asarray(np.where(np.arange(10) < length, 1, 0)[None].repeat(4, 0))


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_head_shapes(placement):
    config = dataclasses.replace(CONFIG, norm_placement=placement)
    mlm, nsp = EncoderForPreTraining(config, rngs=nnx.Rngs(0))(TOKENS)
    assert mlm.shape == (4, 10, 40) and nsp.shape == (4, 2)
    classify = EncoderForSequenceClassification(config, 3, rngs=nnx.Rngs(0), pooling="mean")
    assert classify(TOKENS, segment_ids=padded(7)).shape == (4, 3)
    assert EncoderForTokenClassification(config, 5, rngs=nnx.Rngs(0))(TOKENS).shape == (4, 10, 5)


def test_padding_tokens_do_not_change_real_outputs():
    model = EncoderForSequenceClassification(CONFIG, 3, rngs=nnx.Rngs(0), pooling="mean")
    hidden_short = model.encoder(TOKENS[:, :6])
    other_pad = TOKENS.at[:, 6:].set(jnp.arange(4)[:, None] + 1)
    hidden_padded = model.encoder(other_pad, segment_ids=padded(6))
    np.testing.assert_allclose(hidden_padded[:, :6], hidden_short, atol=1e-5)
    np.testing.assert_allclose(model(other_pad, segment_ids=padded(6)),
                               model(TOKENS[:, :6]), atol=1e-5)


def test_token_types_change_the_output_and_dropout_needs_a_key():
    model = Encoder(dataclasses.replace(CONFIG, dropout_rate=0.5), rngs=nnx.Rngs(0))
    types = jnp.ones_like(TOKENS)
    assert not np.allclose(model(TOKENS), model(TOKENS, token_type_ids=types))
    np.testing.assert_array_equal(model(TOKENS), model(TOKENS))
    assert not np.allclose(model(TOKENS, dropout_key=jax.random.key(0)), model(TOKENS))


def test_user_errors():
    with pytest.raises(UserError, match="norm_placement"):
        dataclasses.replace(CONFIG, norm_placement="middle")
    with pytest.raises(UserError, match="pooler"):
        EncoderForSequenceClassification(dataclasses.replace(CONFIG, pooler=False), 2,
                                         rngs=nnx.Rngs(0), pooling="cls")


def test_sharded_equals_unsharded():
    reference = EncoderForPreTraining(CONFIG, rngs=nnx.Rngs(0))
    model, _ = sharded_copy(lambda shard: EncoderForPreTraining(CONFIG, rngs=nnx.Rngs(1),
                                                                shard=shard), reference)
    tokens = jnp.asarray(np.random.default_rng(1).integers(1, 40, size=(8, 10)))
    segments = jnp.ones_like(tokens).at[::2, 7:].set(0)
    forward = nnx.jit(lambda m, t, s: m(t, segment_ids=s))
    for ours, expected in zip(forward(model, tokens, segments), reference(tokens, segment_ids=segments)):
        assert float(jnp.max(jnp.abs(ours - expected))) < 1e-5
    assert len(model.encoder.token_embed.embedding.get_value().sharding.device_set) == 8


def test_each_residual_branch_is_dropped_once(monkeypatch):
    """BERT drops the attention output and the MLP output once each (BertSelfOutput, BertOutput)."""
    from llmos_jax.models import attention, encoder, mlp
    from llmos_jax.models.axes import no_sharding
    from llmos_jax.models.dropout import dropout as real_dropout

    residual_drops = []

    def spy(x, rate, key):
        if key is not None and rate > 0 and x.shape == (4, 10, 32):
            residual_drops.append(rate)
        return real_dropout(x, rate, key)

    for module in (attention, encoder, mlp):
        monkeypatch.setattr(module, "dropout", spy)
    config = dataclasses.replace(CONFIG, dropout_rate=0.1)
    block = encoder.EncoderBlock(config, post_norm=True, rngs=nnx.Rngs(0))
    x = jnp.ones((4, 10, 32))
    block(x, positions=jnp.arange(10)[None].repeat(4, 0), segment_ids=None, config=config,
          shard=no_sharding, dropout_key=jax.random.key(0))
    assert residual_drops == [0.1, 0.1]
