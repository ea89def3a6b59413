"""Sampling: reproducible per request, the right distribution, filters that hold, and
logits processors equal to transformers' on random inputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from inference_helpers import jitted_forward, random_model

from llmos_jax.inference import logits_processors as lp
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.generate import generate
from llmos_jax.models import DecoderLM, TransformerConfig

VOCAB = 12
PROMPT = [3, 1, 4, 1, 5]


@pytest.fixture(scope="module")
def model():
    config = TransformerConfig(vocab_size=VOCAB, num_layers=1, embed_dim=16, num_heads=2,
                               max_len=32)
    # A larger weight scale gives a skewed next-token distribution.
    return random_model(lambda rngs: DecoderLM(config, rngs=rngs), std=0.3)


@pytest.fixture(scope="module")
def next_logits(model):
    return np.asarray(jitted_forward(model)(jnp.asarray([PROMPT]))[0, -1])


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def first_tokens(model, config, samples):
    results = generate(model, None, [PROMPT], DecodeConfig(
        method="sample", max_new_tokens=1, num_return_sequences=samples, **config))
    return np.array([c.tokens[0] for c in results[0].completions])


def test_same_seed_same_sample_whatever_the_batch(model):
    config = DecodeConfig(method="sample", max_new_tokens=6, top_k=8)
    other = [2, 7, 1, 8, 2, 8, 1, 8, 2]
    alone = generate(model, None, [PROMPT], config, seeds=[11])
    batched = generate(model, None, [other, PROMPT, PROMPT], config, seeds=[5, 11, 12])
    assert batched[1].tokens == alone[0].tokens
    assert batched[2].tokens != alone[0].tokens  # another seed, another sample
    again = generate(model, None, [other, PROMPT, PROMPT], config, seeds=[5, 11, 12])
    assert [r.tokens for r in again] == [r.tokens for r in batched]


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_first_token_frequencies_match_softmax(model, next_logits, temperature):
    samples = 4000
    tokens = first_tokens(model, dict(temperature=temperature), samples)
    frequencies = np.bincount(tokens, minlength=VOCAB) / samples
    expected = softmax(next_logits / temperature)
    # 4000 draws: a frequency's standard deviation is at most 0.008.
    assert np.max(np.abs(frequencies - expected)) < 0.03
    assert expected.max() < 0.9  # the test distribution is not degenerate


@pytest.mark.parametrize("filters", [dict(top_k=3), dict(top_p=0.6), dict(top_k=4, top_p=0.5)],
                         ids=["top_k", "top_p", "both"])
def test_filters_never_emit_excluded_tokens(model, next_logits, filters):
    tokens = first_tokens(model, filters, 1000)
    order = np.argsort(-next_logits)
    allowed = set(order[:filters.get("top_k", VOCAB)].tolist())
    if "top_p" in filters:
        probs = softmax(np.where(np.isin(np.arange(VOCAB), list(allowed)), next_logits, -np.inf))
        cumulative = np.cumsum(probs[order])
        nucleus = order[:int(np.searchsorted(cumulative, filters["top_p"])) + 1]
        allowed &= set(nucleus.tolist())
    assert set(tokens.tolist()) <= allowed
    assert len(set(tokens.tolist())) >= min(2, len(allowed))


def test_processors_equal_transformers(torch_and_transformers):
    torch, transformers = torch_and_transformers
    from transformers import generation as hf
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4, 30)).astype(np.float32)
    tokens = rng.integers(0, 30, (4, 9))
    tokens[:, 7:9] = tokens[:, 1:3]  # ends with a bigram seen before: bans follow
    valid = np.ones(tokens.shape, bool)
    last = jnp.int32(tokens.shape[1] - 1)
    cases = [
        (hf.TopKLogitsWarper(5), lambda x: lp.top_k_filter(x, 5)),
        (hf.TopPLogitsWarper(0.7), lambda x: lp.top_p_filter(x, 0.7)),
        (hf.TopPLogitsWarper(0.05), lambda x: lp.top_p_filter(x, 0.05)),
        (hf.RepetitionPenaltyLogitsProcessor(1.7),
         lambda x: lp.repetition_penalty(x, jnp.asarray(tokens), jnp.asarray(valid), 1.7)),
        (hf.NoRepeatNGramLogitsProcessor(2),
         lambda x: lp.no_repeat_ngram(x, jnp.asarray(tokens), jnp.asarray(valid), last, 2)),
        (hf.NoRepeatNGramLogitsProcessor(3),
         lambda x: lp.no_repeat_ngram(x, jnp.asarray(tokens), jnp.asarray(valid), last, 3)),
    ]
    for theirs, ours in cases:
        expected = theirs(torch.tensor(tokens), torch.tensor(logits)).numpy()
        got = np.asarray(ours(jnp.asarray(logits)))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected), err_msg=repr(theirs))
        finite = ~np.isinf(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-6, err_msg=repr(theirs))
    for ngram in cases[4:]:
        assert np.isinf(np.asarray(ngram[1](jnp.asarray(logits)))).any(axis=1).all()


@pytest.fixture(scope="module")
def torch_and_transformers():
    return pytest.importorskip("torch"), pytest.importorskip("transformers")
