"""Dropout masks: the integer-threshold draw equals `jax.random.bernoulli`'s, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.models.dropout import dropout, keep_mask, keep_threshold


@pytest.mark.parametrize("rate", [0.1, 0.05, 1 / 3, 0.5, 0.9, 1e-8])
def test_keep_mask_is_bernoullis_mask(rate):
    for seed in range(3):
        key = jax.random.fold_in(jax.random.key(seed), 11)
        for shape in [(257, 33), (2, 3, 4, 5)]:
            expected = np.asarray(jax.random.bernoulli(key, 1.0 - rate, shape))
            got = np.asarray(jax.jit(keep_mask, static_argnums=(1, 2))(key, rate, shape))
            np.testing.assert_array_equal(got, expected)


def test_dropout_keeps_the_expected_fraction_and_rescales():
    x = jnp.ones((400, 500))
    y = np.asarray(dropout(x, 0.1, jax.random.key(0)))
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 0.005
    np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x


@pytest.mark.parametrize("rate", [0.1, 0.05, 1 / 3, 0.5, 0.9, 1e-8, 0.0])
def test_the_threshold_agrees_with_bernoullis_float_rule_at_its_boundary(rate):
    # bernoulli keeps b iff float32((b >> 9) / 2**23) < float32(1 - rate); check the
    # 23-bit values next to the integer threshold, where an off-by-one would show.
    threshold = keep_threshold(rate)
    keep_prob = np.float32(1.0 - rate)
    middle = threshold >> 9
    for m in range(max(0, middle - 3), min(2**23, middle + 4)):
        assert ((m << 9) < threshold) == (np.float32(m / 2**23) < keep_prob), m
