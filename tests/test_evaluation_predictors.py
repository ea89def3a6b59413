"""Predictors on tiny random models: one output per example, each the same as that example
run alone (padding rows and lengths change nothing), words mapped back to tags, generated
text and target scores as the inference functions give them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from inference_helpers import jitted_forward, random_model

from llmos_jax.data.finetune_tasks.conll2003 import LABELS
from llmos_jax.errors import UserError
from llmos_jax import metrics
from llmos_jax.evaluation.predictors import (
    generator,
    sequence_classifier,
    target_scorer,
    token_classifier,
)
from llmos_jax.inference import DecodeConfig, generate, score
from llmos_jax.models import DecoderLM, EncoderDecoderLM, TransformerConfig, t5_config
from llmos_jax.models.encoder import EncoderConfig
from llmos_jax.models.heads import (
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
)

LENGTH = 8
ENCODER = EncoderConfig(vocab_size=40, num_layers=1, embed_dim=16, num_heads=2, max_len=LENGTH,
                        position_embedding="learned", norm="layernorm", use_bias=True,
                        dropout_rate=0.0)


def _example(ids, **extra):
    ids = np.asarray(ids, np.int32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), **extra}


def _alone(forward, ids):
    """Logits of one example, cut to LENGTH, without padding: [length, ...] or [classes]."""
    ids = jnp.asarray([ids[:LENGTH]], jnp.int32)
    return np.asarray(forward(ids, token_type_ids=jnp.zeros_like(ids),
                              segment_ids=jnp.ones_like(ids)))[0]


def test_sequence_classifier_matches_each_example_alone():
    model = random_model(lambda rngs: EncoderForSequenceClassification(ENCODER, 3, rngs=rngs), std=2.0)
    rng = np.random.default_rng(0)
    examples = [_example([1, *rng.integers(2, 40, n)], label=np.int32(0), targets_pretokenized=b"0")
                for n in (2, 11, 5, 2, 11, 5, 9, 2)]  # 11 > LENGTH: cut as in training
    predict = sequence_classifier(model, sequence_length=LENGTH, batch_size=8)
    predictions = predict(examples)
    forward = jitted_forward(model)
    expected = [str(int(np.argmax(_alone(forward, e["input_ids"])))) for e in examples]
    assert predictions == expected
    assert len(set(predictions)) > 1  # the random model does not answer one class throughout
    assert predict(examples[:1]) == expected[:1]  # same program, fewer real rows
    with pytest.raises(UserError, match="batches of at most 8"):
        predict(examples * 2)
    with pytest.raises(UserError, match="reads the feature 'input_ids'"):
        predict([{"inputs": np.array([1, 2])}])


def test_token_classifier_recovers_one_tag_per_word():
    model = random_model(lambda rngs: EncoderForTokenClassification(ENCODER, len(LABELS), rngs=rngs),
                         std=2.0)
    forward = jitted_forward(model)
    # [CLS] w0 w1a w1b w2 [SEP]: 3 words, first sub-tokens at 1, 2, 4.
    short = _example([1, 5, 6, 7, 8, 2], label_weights=np.array([0, 1, 1, 0, 1, 0], np.float32),
                     labels=np.zeros(6, np.int32), words=b"a bc d", word_tags=b"O O O")
    # 6 words; LENGTH=8 keeps 5 first sub-tokens (1, 3, 4, 6, 7) and cuts the last word's (8).
    weights = np.array([0, 1, 0, 1, 1, 0, 1, 1, 1, 0], np.float32)
    long = _example([1, 9, 10, 11, 12, 13, 14, 15, 16, 2], label_weights=weights,
                    labels=np.zeros(10, np.int32), words=b"p q r s t u", word_tags=b"O O O O O O")
    tags = token_classifier(model, sequence_length=LENGTH, batch_size=4)([short, long])

    short_tags = tags[0].split()
    assert short_tags == [LABELS[int(np.argmax(_alone(forward, short["input_ids"])[p]))]
                          for p in (1, 2, 4)]
    long_tags = tags[1].split()
    assert len(long_tags) == 6 and long_tags[5] == "O"
    assert long_tags[:5] == [LABELS[int(np.argmax(_alone(forward, long["input_ids"])[p]))]
                             for p in (1, 3, 4, 6, 7)]
    assert len(set(short_tags + long_tags)) > 1
    # The tags are valid input to the span metric, word-aligned with the gold.
    scores = metrics.conll_span_f1([["O"] * 3, ["O"] * 6], [t.split() for t in tags])
    assert scores["recall"] == 0.0  # the gold has no entities


class DigitVocabulary:
    """Decodes ids as space-separated numbers."""

    eos_id = 1

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def test_generator_gives_generate_texts_with_inputs_cut():
    config = t5_config("1.0", vocab_size=24, num_layers=1, embed_dim=16, num_heads=2, head_dim=8,
                       mlp_dim=16, relative_buckets=8, relative_max_distance=20, dropout_rate=0.0)
    model = random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs), std=0.5)
    decode = DecodeConfig(max_new_tokens=5, eos_id=1)
    examples = [{"inputs": np.array([3, 5, 7, 1], np.int32)},
                {"inputs": np.array([2, 4, 6, 8, 10, 12, 1], np.int32)}]
    predict = generator(model, None, vocabulary=DigitVocabulary(), decode_config=decode,
                        max_input_length=5, batch_size=2)
    texts = predict(examples)
    expected = generate(model, None, [[3, 5, 7, 1], [2, 4, 6, 8, 10]], decode,
                        vocabulary=DigitVocabulary())
    assert texts == [r.text for r in expected] and all(texts)
    with pytest.raises(UserError, match="reads the feature 'inputs'"):
        predict([{"targets": np.array([3])}])


def test_target_scorer_rows_give_the_decoders_perplexity():
    config = TransformerConfig(vocab_size=24, num_layers=1, embed_dim=16, num_heads=2, max_len=16)
    model = random_model(lambda rngs: DecoderLM(config, rngs=rngs))
    params = nnx.state(model, nnx.Param)
    examples = [{"targets": np.array([4, 9, 3, 1], np.int32)},
                {"targets": np.array([7, 1], np.int32)}]
    rows = target_scorer(model, params)(examples)
    forward = jitted_forward(model)
    nll, count = 0.0, 0
    correct_total = 0
    for example, (log_likelihood, num_tokens, num_correct) in zip(examples, rows):
        sequence = [0, *example["targets"].tolist()]  # the LM converter's shift-right row
        log_probs = jax.nn.log_softmax(forward(jnp.asarray([sequence[:-1]]))[0])
        expected = sum(float(log_probs[i, t]) for i, t in enumerate(sequence[1:]))
        assert log_likelihood == pytest.approx(expected, abs=1e-4)
        assert num_tokens == len(example["targets"])
        hits = sum(int(jnp.argmax(log_probs[i]) == t) for i, t in enumerate(sequence[1:]))
        assert num_correct == hits
        correct_total += hits
        nll, count = nll - expected, count + num_tokens
    assert metrics.perplexity(None, rows)["perplexity"] == pytest.approx(np.exp(nll / count), rel=1e-4)
    assert metrics.token_accuracy(None, rows)["token_accuracy"] == pytest.approx(
        100.0 * correct_total / count)

    # With inputs, the targets are scored after them (prefix LM / encoder-decoder input).
    prompted = target_scorer(model, params, max_input_length=2)(
        [{"inputs": np.array([5, 6, 8], np.int32), "targets": np.array([3, 1], np.int32)}])
    direct = score(model, params, [[5, 6]], [[3, 1]])[0]
    assert prompted == [(pytest.approx(direct.log_likelihood), 2.0, float(direct.num_correct))]
    with pytest.raises(UserError, match="scoring failed: request 0"):
        target_scorer(model, params)([{"targets": np.arange(1, 20, dtype=np.int32)}])
