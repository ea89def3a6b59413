"""BERT's masked-language-model corruption: choose 15% of tokens, then 80/10/10.

Of the maskable tokens (not special, not padding), ``round(mask_rate * n)``
(at least one, at most ``max_predictions``) are chosen uniformly without
replacement. Each chosen token becomes the mask id with probability 0.8, a
random id with probability 0.1, and stays itself with probability 0.1; the
model must predict the original at every chosen position, including the
unchanged ones (so it cannot learn that an unmasked token is always right).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from llmos_jax.data.pretraining import random_streams
from llmos_jax.errors import UserError

MASK_PROBABILITY = 0.8
RANDOM_PROBABILITY = 0.1  # the remaining 0.1 keeps the token


@dataclasses.dataclass(frozen=True)
class MaskedTokens:
    """One example after masking; all tensors have the input's shape.

    Attributes:
      inputs: Token ids with chosen positions replaced (mask / random / kept).
      targets: The original id at chosen positions, 0 elsewhere.
      weights: float32, 1.0 at chosen positions (where the loss counts).
    """

    inputs: tf.Tensor
    targets: tf.Tensor
    weights: tf.Tensor


def mask_tokens(tokens: tf.Tensor, maskable: tf.Tensor, seed: tf.Tensor, *, mask_id: int,
                random_token_range: tuple[int, int], mask_rate: float = 0.15,
                max_predictions: int | None = None) -> MaskedTokens:
    """Chooses and corrupts tokens of one example, BERT style.

    Args:
      tokens: int [length] token ids.
      maskable: bool [length]; False at special tokens and padding.
      seed: Stateless seed, shape [2]; the result is a pure function of it.
      mask_id: The [MASK] id.
      random_token_range: [low, high) ids drawn for the random replacement.
      mask_rate: Fraction of maskable tokens to choose.
      max_predictions: Cap on chosen tokens per example (None: no cap).
    """
    check_mask_rate(mask_rate)
    low, high = random_token_range
    length = tf.shape(tokens)
    fold_in = tf.random.experimental.stateless_fold_in

    def draw_seed(purpose: int) -> tf.Tensor:
        return fold_in(seed, purpose, alg=random_streams.ALGORITHM)

    candidates = tf.reduce_sum(tf.cast(maskable, tf.int32))
    chosen_count = tf.maximum(1, tf.cast(tf.round(tf.cast(candidates, tf.float64) * mask_rate),
                                         tf.int32))
    if max_predictions is not None:
        chosen_count = tf.minimum(chosen_count, max_predictions)
    chosen_count = tf.minimum(chosen_count, candidates)
    rank = random_streams.rank_of_random_keys(length, draw_seed(0), maskable)
    chosen = tf.logical_and(rank < chosen_count, maskable)

    action = random_streams.uniform(length, draw_seed(1))
    random_ids = tf.cast(random_streams.uniform_ints(length, draw_seed(2), low, high), tokens.dtype)
    replaced = tf.where(action < MASK_PROBABILITY, tf.cast(mask_id, tokens.dtype),
                        tf.where(action < MASK_PROBABILITY + RANDOM_PROBABILITY, random_ids, tokens))
    return MaskedTokens(
        inputs=tf.where(chosen, replaced, tokens),
        targets=tf.where(chosen, tokens, tf.zeros_like(tokens)),
        weights=tf.cast(chosen, tf.float32),
    )


def check_mask_rate(mask_rate: float) -> None:
    """Raises UserError unless 0 < mask_rate < 1."""
    if not 0.0 < mask_rate < 1.0:
        raise UserError(f"mask_rate must be in (0, 1), got {mask_rate}; BERT uses 0.15.")
