"""Bad decoding input: a clear error naming the setting, and no other request lost."""

import pytest
from inference_helpers import random_model

from llmos_jax.errors import UserError
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.generate import generate
from llmos_jax.models import DecoderLM, EncoderDecoderLM, TransformerConfig, t5_config


@pytest.fixture(scope="module")
def model():
    config = TransformerConfig(vocab_size=20, num_layers=1, embed_dim=16, num_heads=2, max_len=16)
    return random_model(lambda rngs: DecoderLM(config, rngs=rngs))


def test_prompt_longer_than_the_cache_fails_alone(model):
    good, too_long, full = [1, 2, 3], list(range(1, 20)), list(range(16))
    config = DecodeConfig(max_new_tokens=4)
    results = generate(model, None, [good, too_long, [], full, good[::-1]], config)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "request 1: the prompt has 19 tokens but the cache holds 16 positions" in results[1].error
    assert "max_cache_len" in results[1].error
    assert "request 2: the prompt is empty" in results[2].error
    assert "request 3: the prompt has 16 tokens" in results[3].error
    alone = generate(model, None, [good, good[::-1]], config)
    assert [results[0].tokens, results[4].tokens] == [r.tokens for r in alone]
    assert len(results[0].tokens) == 4


def test_generation_stops_at_the_cache_end(model):
    results = generate(model, None, [list(range(1, 14)), [1, 2]],
                       DecodeConfig(max_new_tokens=8))
    assert len(results[0].tokens) == 3 and results[0].completions[0].finish_reason == "length"
    assert len(results[1].tokens) == 8


def test_encoder_input_longer_than_the_cache_fails_alone():
    config = t5_config("1.1", vocab_size=20, num_layers=1, embed_dim=16, num_heads=2, head_dim=8,
                       mlp_dim=16, relative_buckets=8, relative_max_distance=20, max_len=16)
    model = random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs))
    results = generate(model, None, [[1, 2, 3], list(range(1, 18))],
                       DecodeConfig(max_new_tokens=3))
    assert results[0].ok and len(results[0].tokens) == 3
    assert "request 1: the encoder input has 17 tokens, more than the 16" in results[1].error


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5])
def test_top_p_outside_unit_interval(top_p):
    with pytest.raises(UserError, match=r"DecodeConfig\.top_p must be in \(0, 1\], got"):
        DecodeConfig(method="sample", top_p=top_p)


def test_more_beams_than_vocabulary(model):
    with pytest.raises(UserError, match=r"DecodeConfig\.num_beams=21 is larger than the "
                                        r"vocabulary \(20 tokens\)"):
        generate(model, None, [[1, 2]], DecodeConfig(method="beam", num_beams=21))


@pytest.mark.parametrize("fields,message", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_k=0), "top_k must be a positive integer"),
    (dict(method="beam", num_beams=2, num_return_sequences=3), "num_return_sequences=3 is larger"),
    (dict(num_return_sequences=2), "must be 1 with method='greedy'"),
    (dict(method="nucleus"), "method='nucleus' is not one of"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(stop_sequences=((),)), "stop_sequences contains an empty sequence"),
])
def test_invalid_settings_name_the_field(fields, message):
    with pytest.raises(UserError, match=message):
        DecodeConfig(**fields)


def test_text_prompt_needs_a_vocabulary_and_ids_must_fit(model):
    with pytest.raises(UserError, match="prompt 0 is text but generate got no vocabulary"):
        generate(model, None, ["hello"], DecodeConfig())
    with pytest.raises(UserError, match=r"DecodeConfig\.eos_id=99 is outside the vocabulary"):
        generate(model, None, [[1]], DecodeConfig(eos_id=99))
