"""Token-level cross-entropy with optional label smoothing and z-loss, as weighted sums.

Everything is returned as sums over tokens plus the weight total, so
microbatches can be accumulated exactly and the mean taken once over the
whole global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                       z_loss: float = 0.0, label_smoothing: float = 0.0
                       ) -> dict[str, jax.Array]:
    """Weighted sums of the loss terms for one batch.

    Args:
      logits: float [batch, length, vocab].
      targets: int [batch, length].
      weights: float [batch, length]; 0 for padding.
      z_loss: Coefficient of the PaLM z-loss, `z_loss * logsumexp(logits)**2`,
        which keeps the softmax normaliser near 1 for stability.
      label_smoothing: Mass moved from the target to a uniform distribution
        over the vocabulary: the trained loss is `(1 - s) * nll + s * uniform`,
        where `uniform` is the cross-entropy against the uniform distribution.
        `cross_entropy` stays the plain NLL, so perplexities remain comparable.

    Returns:
      `loss` (the trained loss: smoothed cross-entropy plus z-loss, summed),
      `cross_entropy` (plain NLL), `z_loss`, `correct` (argmax hits) and
      `weight` (the token count), all summed.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_z - target_logit
    z_term = z_loss * jnp.square(log_z)
    trained = nll
    if label_smoothing:
        uniform = log_z - jnp.mean(logits, axis=-1)
        trained = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss": jnp.sum((trained + z_term) * weights),
        "cross_entropy": jnp.sum(nll * weights),
        "z_loss": jnp.sum(z_term * weights),
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
    }
