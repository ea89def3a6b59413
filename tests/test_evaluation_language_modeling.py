"""Perplexity and token accuracy from summed NLL and token counts."""

import math

import numpy as np
import pytest

from llmos_jax.errors import UserError
from llmos_jax.metrics.language_modeling import (
    perplexity,
    perplexity_from_totals,
    token_accuracy,
)


def test_perplexity_is_exp_of_mean_token_nll():
    rng = np.random.default_rng(0)
    token_nll = [rng.uniform(0.1, 5.0, size=n) for n in (3, 7, 1, 12)]
    scores = [(-nll.sum(), len(nll), 0) for nll in token_nll]
    mean_nll = np.concatenate(token_nll).mean()
    results = perplexity(None, scores)
    assert results["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-12)
    assert results["nll_per_token"] == pytest.approx(mean_nll, rel=1e-12)
    # Token-weighted: not the mean of per-example perplexities.
    per_example = np.mean([math.exp(nll.mean()) for nll in token_nll])
    assert results["perplexity"] != pytest.approx(per_example)


def test_uniform_model_has_vocabulary_size_perplexity():
    vocab_size, num_tokens = 50, 9
    scores = [(num_tokens * -math.log(vocab_size), num_tokens)]
    assert perplexity([""], scores)["perplexity"] == pytest.approx(vocab_size)


def test_token_accuracy_weights_by_tokens():
    scores = np.array([[-1.0, 4, 3], [-2.0, 6, 0]])
    assert token_accuracy(["a", "b"], scores) == {"token_accuracy": pytest.approx(30.0)}


def test_overflow_is_inf():
    assert perplexity_from_totals(1e6, 1.0) == math.inf


def test_bad_scores_raise():
    with pytest.raises(UserError, match="no scored tokens"):
        perplexity(None, [(0.0, 0)])
    with pytest.raises(UserError, match="num_correct"):
        token_accuracy(None, [(-1.0, 2)])
