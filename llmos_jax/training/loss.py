"""Token-level cross-entropy with optional z-loss, as weighted sums.

Everything is returned as sums over tokens plus the weight total, so
microbatches can be accumulated exactly and the mean taken once over the
whole global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                       z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Weighted sums of the loss terms for one batch.

    Args:
      logits: float [batch, length, vocab].
      targets: int [batch, length].
      weights: float [batch, length]; 0 for padding.
      z_loss: Coefficient of the PaLM z-loss, `z_loss * logsumexp(logits)**2`,
        which keeps the softmax normaliser near 1 for stability.

    Returns:
      `loss` (cross-entropy plus z-loss, summed), `cross_entropy`, `z_loss`,
      `correct` (argmax hits) and `weight` (the token count), all summed.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_z - target_logit
    z_term = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss": jnp.sum((nll + z_term) * weights),
        "cross_entropy": jnp.sum(nll * weights),
        "z_loss": jnp.sum(z_term * weights),
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
    }
