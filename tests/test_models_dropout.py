"""Dropout masks: the hashed draws are uniform, independent across keys and neighbours,
deterministic, and the keep rule is `jax.random.bernoulli`'s."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.models.dropout import dropout, hashed_bits, keep_mask, keep_threshold


def _bits(key, shape):
    return np.asarray(jax.jit(hashed_bits, static_argnums=1)(key, shape))


def test_hashed_bits_are_uniform_in_every_byte():
    bits = _bits(jax.random.key(0), (512, 1000)).astype(np.uint64).ravel()
    expected = bits.size / 256
    for shift in (0, 8, 16, 24):
        counts = np.bincount(((bits >> shift) & 255).astype(np.int64), minlength=256)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        # 255 degrees of freedom: mean 255, sd ~22.6; 400 is beyond 6 sd.
        assert chi2 < 400, (shift, chi2)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_masks_of_neighbours_and_of_other_keys_are_independent(rate):
    shape = (300, 700)
    key = jax.random.key(3)
    masks = [np.asarray(jax.jit(keep_mask, static_argnums=(1, 2))(
        jax.random.fold_in(key, site), rate, shape)) for site in range(3)]
    keep = 1.0 - rate
    tolerance = 5 * np.sqrt(keep * (1 - keep) / masks[0].size)  # 5 sd of a mean
    for mask in masks:
        assert abs(mask.mean() - keep) < tolerance
    both = lambda a, b: (a & b).mean()  # noqa: E731
    joint_tolerance = 5 * np.sqrt(keep**2 * (1 - keep**2) / masks[0].size)
    m = masks[0]
    assert abs(both(m[:, 1:], m[:, :-1]) - keep**2) < joint_tolerance  # along a row
    assert abs(both(m[1:], m[:-1]) - keep**2) < joint_tolerance  # down a column
    assert abs(both(masks[0], masks[1]) - keep**2) < joint_tolerance  # other site
    assert abs(both(masks[1], masks[2]) - keep**2) < joint_tolerance


def test_the_same_key_draws_the_same_mask_and_another_seed_another():
    shape = (64, 96)
    a = _bits(jax.random.key(7), shape)
    np.testing.assert_array_equal(a, _bits(jax.random.key(7), shape))
    assert (a == _bits(jax.random.key(8), shape)).mean() < 0.01
    raw = jax.random.key_data(jax.random.key(7))  # old-style uint32 keys work too
    np.testing.assert_array_equal(a, _bits(raw, shape))


def test_dropout_keeps_the_expected_fraction_and_rescales():
    x = jnp.ones((400, 500))
    y = np.asarray(dropout(x, 0.1, jax.random.key(0)))
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 0.005
    np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x


def test_a_sharded_mask_equals_the_unsharded_one():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices()[:4]).reshape(2, 2)
    mesh = Mesh(devices, ("data", "model"))
    shape = (64, 128)
    key = jax.random.key(5)
    sharded = jax.jit(lambda k: keep_mask(k, 0.3, shape),
                      out_shardings=NamedSharding(mesh, PartitionSpec("data", "model")))(key)
    assert len(sharded.addressable_shards) == 4
    np.testing.assert_array_equal(np.asarray(sharded),
                                  np.asarray(jax.jit(keep_mask, static_argnums=(1, 2))(
                                      key, 0.3, shape)))


@pytest.mark.parametrize("rate", [0.1, 0.05, 1 / 3, 0.5, 0.9, 1e-8, 0.0])
def test_the_threshold_agrees_with_bernoullis_float_rule_at_its_boundary(rate):
    # bernoulli keeps b iff float32((b >> 9) / 2**23) < float32(1 - rate); check the
    # 23-bit values next to the integer threshold, where an off-by-one would show.
    threshold = keep_threshold(rate)
    keep_prob = np.float32(1.0 - rate)
    middle = threshold >> 9
    for m in range(max(0, middle - 3), min(2**23, middle + 4)):
        assert ((m << 9) < threshold) == (np.float32(m / 2**23) < keep_prob), m
