"""DecodingEngine: compiles each program once, owns its programs per model, and the EOS rule."""

import dataclasses

import gin
import numpy as np
import pytest
from inference_helpers import random_model

from llmos_jax.inference import DecodeConfig, DecodingEngine, generate, score, with_default_eos
from llmos_jax.models import DecoderLM, TransformerConfig


class Letters:
    """A toy vocabulary: id i is the letter chr(97 + i); 'z' (25) is EOS."""

    eos_id = 25

    def encode(self, text):
        return [ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


def _decoder(scan_layers: bool, seed: int, num_layers: int = 2):
    config = TransformerConfig(vocab_size=26, num_layers=num_layers, embed_dim=16, num_heads=2,
                               max_len=32, scan_layers=scan_layers)
    return random_model(lambda rngs: DecoderLM(config, rngs=rngs), seed=seed, std=0.3)


@pytest.fixture(scope="module")
def scanned():
    return _decoder(scan_layers=True, seed=3)


def test_repeated_calls_with_the_same_shapes_compile_nothing(scanned):
    engine = DecodingEngine(scanned, vocabulary=Letters())
    config = DecodeConfig(max_new_tokens=6)
    first = engine.generate(["hello", "abc"], config)
    # The weights' unstacking and the decode program, once each.
    assert engine.compilations == 2
    again = engine.generate(["hello", "abc"], config)
    # Other prompts of the same length bucket (8) and other seeds reuse the program.
    other = engine.generate(["xyz", "hellowor"], dataclasses.replace(config, seed=7))
    assert engine.compilations == 2
    assert [r.tokens for r in again] == [r.tokens for r in first]
    assert [r.tokens for r in first] == [r.tokens for r in generate(
        scanned, None, ["hello", "abc"], config, vocabulary=Letters())]
    assert all(r.ok and len(r.tokens) == 6 for r in other)
    # A longer bucket, or another method, is a new program: exactly one more each.
    engine.generate(["helloworld"], config)
    assert engine.compilations == 3
    engine.generate(["hello"], DecodeConfig(method="beam", num_beams=2, max_new_tokens=6))
    assert engine.compilations == 4

    scores = engine.score([[1, 2], [3]], [[4, 5], [6, 7, 8]])
    assert engine.compilations == 5
    assert engine.score([[1, 2], [3]], [[4, 5], [6, 7, 8]]) == scores
    assert engine.compilations == 5
    assert scores == score(scanned, None, [[1, 2], [3]], [[4, 5], [6, 7, 8]])


def test_with_params_shares_the_programs_and_decodes_with_the_new_weights(scanned):
    engine = DecodingEngine(scanned)
    config = DecodeConfig(max_new_tokens=8)
    before = engine.generate([[1, 2, 3]], config)[0].tokens
    compiled = engine.compilations
    other = _decoder(scan_layers=True, seed=11)
    swapped = engine.with_params(_params(other))
    after = swapped.generate([[1, 2, 3]], config)[0].tokens
    # The new weights are unstacked and decoded by the programs already compiled.
    assert swapped.compilations == engine.compilations == compiled
    assert after == generate(other, None, [[1, 2, 3]], config)[0].tokens
    assert after != before
    assert engine.generate([[1, 2, 3]], config)[0].tokens == before


def test_two_models_keep_their_own_programs():
    small, deep = _decoder(False, seed=1, num_layers=1), _decoder(False, seed=2)
    a, b = DecodingEngine(small), DecodingEngine(deep)
    config = DecodeConfig(max_new_tokens=4)
    tokens_a = a.generate([[1, 2]], config)[0].tokens
    assert (a.compilations, b.compilations) == (1, 0)
    # `b` compiles its own programs (the same shapes as `a`'s, and another); `a` loses none.
    b.generate([[1, 2]], config)
    b.generate([[1] * 9], config)
    assert a.compilations == 1 and b.compilations == 2
    assert a.generate([[1, 2]], config)[0].tokens == tokens_a
    assert a.compilations == 1


def test_a_chosen_eos_wins_and_the_vocabulary_eos_is_the_default():
    assert with_default_eos(None, 25) == DecodeConfig(eos_id=25)
    assert with_default_eos(DecodeConfig(max_new_tokens=3), 25).eos_id == 25
    assert with_default_eos(DecodeConfig(eos_id=4), 25).eos_id == 4
    # Bound to None (never stop at EOS) is a choice too, when the caller knows it was bound.
    assert with_default_eos(DecodeConfig(), 25, eos_bound=True).eos_id is None
    assert with_default_eos(DecodeConfig(), None).eos_id is None
    assert type(with_default_eos(DecodeConfig(), np.int64(25)).eos_id) is int
    # The engine applies the same rule with its vocabulary's EOS, and generate uses configs as given.
    engine = DecodingEngine(_decoder(False, seed=1), vocabulary=Letters())
    assert engine.eos_id == 25
    assert engine.decode_config().eos_id == 25
    assert engine.decode_config(DecodeConfig(eos_id=3)).eos_id == 3
    assert DecodingEngine(_decoder(False, seed=1)).decode_config().eos_id is None


def test_gin_bound_eos_id_wins_over_the_vocabulary_in_llmos_infer():
    from llmos_jax.cli.run_loading import decode_config_from_gin

    gin.clear_config()
    try:
        assert decode_config_from_gin(Letters()).eos_id == 25
        gin.parse_config("DecodeConfig.eos_id = None")
        assert decode_config_from_gin(Letters()).eos_id is None
        gin.clear_config()
        gin.parse_config("DecodeConfig.eos_id = 7")
        assert decode_config_from_gin(Letters()).eos_id == 7
    finally:
        gin.clear_config()


def _params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
