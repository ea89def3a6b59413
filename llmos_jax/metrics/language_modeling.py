"""Language-modelling metrics from summed negative log-likelihood and token weights.

Perplexity is ``exp(total NLL / total weight)``: the exponential of the mean
NLL per target token over the whole split, not a mean of per-example
perplexities. Token accuracy is the share of target tokens whose argmax
prediction is right.

The seqio-shaped ``(targets, scores)`` functions read one score row per
example with the fields in :data:`SCORE_FIELDS`: the summed log-likelihood
of its target tokens (natural log, so ``<= 0``), the number (or total
weight) of those tokens and, for token accuracy, how many of them the model
predicted correctly. ``targets`` is unused; seqio passes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llmos_jax.errors import UserError

SCORE_FIELDS = ("log_likelihood", "num_tokens", "num_correct")
_MAX_EXP_ARGUMENT = math.log(np.finfo(np.float64).max)


def _check_weight(metric: str, weight_sum: float) -> None:
    if not weight_sum > 0:
        raise UserError(
            f"{metric}: the total target-token weight is {weight_sum}; the split has no "
            "scored tokens. Check that the task's targets are not empty."
        )


def perplexity_from_totals(nll_sum: float, weight_sum: float) -> float:
    """``exp(nll_sum / weight_sum)``; ``inf`` when that overflows float64."""
    _check_weight("perplexity", weight_sum)
    mean_nll = float(nll_sum) / float(weight_sum)
    return math.exp(mean_nll) if mean_nll < _MAX_EXP_ARGUMENT else math.inf


def token_accuracy_from_totals(correct_sum: float, weight_sum: float) -> float:
    """Percentage (0-100) of weighted target tokens predicted correctly."""
    _check_weight("token_accuracy", weight_sum)
    return 100.0 * float(correct_sum) / float(weight_sum)


def _score_columns(metric: str, scores: Sequence, num_fields: int) -> np.ndarray:
    """Scores as a float64 array ``[num_examples, num_fields]`` (extra fields dropped)."""
    table = np.asarray(scores, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] < num_fields:
        raise UserError(
            f"{metric}: each score must be a row of {SCORE_FIELDS[:num_fields]} "
            f"(the task's score_fn output), got an array of shape {table.shape}."
        )
    return table[:, :num_fields]


def perplexity(targets: Sequence, scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Split-level perplexity and mean NLL per token (nats) from per-example scores.

    Args:
      targets: unused (seqio's score-metric signature).
      scores: per example ``(log_likelihood, num_tokens, ...)``.

    Returns:
      ``{"perplexity": exp(mean NLL), "nll_per_token": mean NLL}``.
    """
    del targets
    table = _score_columns("perplexity", scores, 2)
    nll_sum, weight_sum = -table[:, 0].sum(), table[:, 1].sum()
    return {
        "perplexity": perplexity_from_totals(nll_sum, weight_sum),
        "nll_per_token": float(nll_sum / weight_sum),
    }


def token_accuracy(targets: Sequence, scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Split-level token accuracy (0-100) from per-example scores.

    Args:
      targets: unused (seqio's score-metric signature).
      scores: per example ``(log_likelihood, num_tokens, num_correct)``.

    Returns:
      ``{"token_accuracy": value}``.
    """
    del targets
    table = _score_columns("token_accuracy", scores, 3)
    return {"token_accuracy": token_accuracy_from_totals(table[:, 2].sum(), table[:, 1].sum())}
