"""input_ablation_nll: own-input NLL is the scored NLL; a model blind to its input loses nothing."""

import numpy as np
import pytest
from flax import nnx
from inference_helpers import random_model

from llmos_jax.evaluation.input_ablation import input_ablation_nll
from llmos_jax.inference.scoring import score
from llmos_jax.models import EncoderDecoderLM, t5_config

VOCAB, EOS = 24, 1
RNG = np.random.default_rng(0)
INPUTS = [list(RNG.integers(2, VOCAB, n)) for n in (5, 9, 3, 7)]
TARGETS = [list(RNG.integers(2, VOCAB, n)) for n in (4, 2, 6, 3)]


def tiny_t5() -> EncoderDecoderLM:
    config = t5_config("1.0", vocab_size=VOCAB, num_layers=1, embed_dim=16, num_heads=2,
                       head_dim=8, mlp_dim=16, relative_buckets=8, relative_max_distance=20,
                       dropout_rate=0.0)
    return random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs), std=0.5)


def test_own_input_is_the_token_mean_of_score_and_wrong_inputs_cost():
    model = tiny_t5()
    means = input_ablation_nll(model, None, INPUTS, TARGETS, eos_id=EOS, batch_size=3)
    scored = score(model, None, INPUTS, TARGETS)
    expected = -sum(r.log_likelihood for r in scored) / sum(len(t) for t in TARGETS)
    np.testing.assert_allclose(means["own input"], expected, rtol=1e-5)
    # A random model with cross-attention does depend on its input.
    assert abs(means["next example's input"] - means["own input"]) > 1e-3
    assert abs(means["EOS only"] - means["own input"]) > 1e-3


def test_a_model_that_ignores_its_input_scores_the_same_under_every_input():
    model = tiny_t5()
    state = nnx.state(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    out = params["decoder_layers"]["cross_attn"]["out"]["kernel"]
    params["decoder_layers"]["cross_attn"]["out"]["kernel"] = np.zeros_like(out)
    means = input_ablation_nll(model, params, INPUTS, TARGETS, eos_id=EOS)
    np.testing.assert_allclose(means["next example's input"], means["own input"], rtol=1e-5)
    np.testing.assert_allclose(means["EOS only"], means["own input"], rtol=1e-5)


def test_needs_at_least_two_pairs():
    with pytest.raises(ValueError, match="at least 2"):
        input_ablation_nll(tiny_t5(), None, INPUTS[:1], TARGETS[:1], eos_id=EOS)
