"""Stateless randomness for preprocessors: a pure function of (seed, index, purpose).

tf.data's stateful random ops depend on iteration order and parallelism, so a
resumed or re-sharded pipeline would corrupt different tokens. Every random
draw here is a stateless op keyed by the user's seed, the example's index in
the stream and a per-purpose stream number, with the Philox algorithm named
explicitly so that CPU and accelerator hosts draw identical values.
"""

from __future__ import annotations

import tensorflow as tf

ALGORITHM = "philox"


def derived_seed(seed: int, index: tf.Tensor, stream: int) -> tf.Tensor:
    """The stateless seed (shape [2]) of one purpose (`stream`) for one example."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, stream, alg=ALGORITHM)


def uniform(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """float32 values in [0, 1)."""
    return tf.random.stateless_uniform(shape, seed, alg=ALGORITHM)


def uniform_ints(shape: tf.Tensor, seed: tf.Tensor, low: tf.Tensor | int,
                 high: tf.Tensor | int) -> tf.Tensor:
    """int32 values in [low, high)."""
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.int32,
                                       alg=ALGORITHM)


def rank_of_random_keys(shape: tf.Tensor, seed: tf.Tensor, eligible: tf.Tensor) -> tf.Tensor:
    """A random permutation rank (0 = first) of each position; ineligible ones rank last.

    Selecting ``rank < k`` picks k eligible positions uniformly without
    replacement.
    """
    keys = tf.where(eligible, uniform(shape, seed), 2.0)
    return tf.argsort(tf.argsort(keys, stable=True), stable=True)
