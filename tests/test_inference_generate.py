"""generate's stopping rules and texts: EOS and stop sequences end sequences and leave the text."""

import pytest
from inference_helpers import random_model

from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.generate import generate
from llmos_jax.models import DecoderLM, TransformerConfig


class Letters:
    """A toy vocabulary: id i is the letter chr(97 + i)."""

    def encode(self, text):
        return [ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


@pytest.fixture(scope="module")
def model():
    config = TransformerConfig(vocab_size=26, num_layers=2, embed_dim=16, num_heads=2, max_len=32)
    return random_model(lambda rngs: DecoderLM(config, rngs=rngs), seed=3, std=0.3)


def test_stop_sequence_and_eos_end_the_sequence_and_leave_the_text(model):
    free = generate(model, None, ["hello"], DecodeConfig(max_new_tokens=10), vocabulary=Letters())
    tokens = free[0].tokens
    assert free[0].text == Letters().decode(tokens) and len(tokens) == 10
    stop = tokens[2:4]
    first = next(i for i in range(len(tokens) - 1) if tuple(tokens[i:i + 2]) == stop)
    stopped = generate(model, None, ["hello"],
                       DecodeConfig(max_new_tokens=10, stop_sequences=(stop, (25, 25, 25))),
                       vocabulary=Letters())[0]
    assert stopped.tokens == tokens[:first + 2]
    assert stopped.completions[0].finish_reason == "stop"
    assert stopped.text == Letters().decode(tokens[:first])
    eos_at = max(i for i in range(len(tokens)) if tokens[i] not in tokens[:i])
    ended = generate(model, None, ["hello"], DecodeConfig(max_new_tokens=10, eos_id=tokens[eos_at]),
                     vocabulary=Letters())[0]
    assert ended.tokens == tokens[:eos_at + 1]
    assert ended.completions[0].finish_reason == "eos"
    assert ended.text == Letters().decode(tokens[:eos_at])


def test_beam_returns_n_best_sorted_by_score(model):
    result = generate(model, None, ["abc"], DecodeConfig(method="beam", num_beams=4,
                                                        num_return_sequences=3,
                                                        max_new_tokens=6),
                      vocabulary=Letters())[0]
    scores = [c.score for c in result.completions]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert len({c.tokens for c in result.completions}) == 3
    greedy = generate(model, None, ["abc"], DecodeConfig(max_new_tokens=6),
                      vocabulary=Letters())[0]
    # With length_penalty 1, the best beam's mean log-prob is at least greedy's.
    assert scores[0] >= greedy.score / len(greedy.tokens) - 1e-5
