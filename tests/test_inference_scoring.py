"""Scoring targets: the log-likelihood equals the decoder's own running sum and a hand sum."""

import jax
import jax.numpy as jnp
import numpy as np
from inference_helpers import jitted_forward, random_model

from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.generate import generate
from llmos_jax.inference.scoring import score
from llmos_jax.models import DecoderLM, EncoderDecoderLM, TransformerConfig, t5_config

PROMPTS = [[3, 5, 7], [2, 4, 6, 8, 10, 1]]


def test_decoder_score_equals_hand_sum_and_greedy_log_likelihood():
    config = TransformerConfig(vocab_size=24, num_layers=2, embed_dim=16, num_heads=2, max_len=16)
    model = random_model(lambda rngs: DecoderLM(config, rngs=rngs))
    targets = [[1, 2], [9, 9, 9]]
    scores = score(model, None, PROMPTS, targets)
    forward = jitted_forward(model)
    for prompt, target, result in zip(PROMPTS, targets, scores):
        sequence = prompt + target
        log_probs = jax.nn.log_softmax(forward(jnp.asarray([sequence[:-1]]))[0])
        expected = sum(float(log_probs[len(prompt) - 1 + i, t]) for i, t in enumerate(target))
        assert abs(result.log_likelihood - expected) < 1e-4 and result.num_tokens == len(target)
    # Greedy's score is its tokens' log-likelihood, computed through the KV cache.
    decoded = generate(model, None, PROMPTS, DecodeConfig(max_new_tokens=5))
    rescored = score(model, None, PROMPTS, [r.tokens for r in decoded])
    np.testing.assert_allclose([r.log_likelihood for r in rescored],
                               [r.score for r in decoded], atol=1e-4)
    # The model reads prompt + target minus the last token: 14 + 3 - 1 = 16 fits exactly.
    full, too_long = score(model, None, [list(range(1, 15)), list(range(1, 16))],
                           [[1, 2, 3], [1, 2, 3]])
    assert full.error is None and full.num_tokens == 3 and 0 <= full.num_correct <= 3
    assert too_long.log_likelihood is None and "do not fit the model's max_len=16" in too_long.error


def test_encoder_decoder_score_equals_greedy_log_likelihood():
    config = t5_config("1.0", vocab_size=24, num_layers=1, embed_dim=16, num_heads=2, head_dim=8,
                       mlp_dim=16, relative_buckets=8, relative_max_distance=20, dropout_rate=0.0)
    model = random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs))
    decoded = generate(model, None, PROMPTS, DecodeConfig(max_new_tokens=4))
    rescored = score(model, None, PROMPTS, [r.tokens for r in decoded])
    np.testing.assert_allclose([r.log_likelihood for r in rescored],
                               [r.score for r in decoded], atol=1e-4)
    assert all(r.num_tokens == 4 for r in rescored)
