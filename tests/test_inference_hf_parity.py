"""Greedy, beam search and penalties match transformers' `generate` token for token.

Random-weight GPT-2 and T5 models built from local configs, imported with our
converters; prompts of different lengths (left-padded for GPT-2, as HF does).
"""

import os

import numpy as np
import pytest

pytest.importorskip("safetensors")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from convert_helpers import randomise_torch  # noqa: E402

from llmos_jax.convert.hf_models import import_hf_model  # noqa: E402
from llmos_jax.inference.decode_config import DecodeConfig  # noqa: E402
from llmos_jax.inference.generate import generate  # noqa: E402

VOCAB = 96
PAD = VOCAB - 1  # HF needs a pad id; pick one unlikely to be generated
GPT2_PROMPTS = [[5, 17, 33, 2, 9], [41, 7, 60, 12, 3, 88, 19, 23, 4], [70, 11, 6]]
T5_PROMPTS = [[5, 17, 33, 2, 9, 44, 1], [41, 7, 60, 12, 1], [70, 11, 6, 30, 31, 32, 33, 8, 1]]
NEW_TOKENS = 8
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def gpt2(torch, transformers, tmp_path_factory):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4,
                                     n_positions=32, bos_token_id=None, eos_token_id=None)
    hf_model = randomise_torch(torch, transformers.GPT2LMHeadModel(config), r"ln_.*weight")
    directory = tmp_path_factory.mktemp("gpt2")
    hf_model.save_pretrained(directory)
    return hf_model, import_hf_model(directory, dropout_rate=0.0)


@pytest.fixture(scope="module")
def t5(torch, transformers, tmp_path_factory):
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                   num_decoder_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    hf_model = randomise_torch(torch, transformers.T5ForConditionalGeneration(config),
                               r"layer_norm")
    directory = tmp_path_factory.mktemp("t5")
    hf_model.save_pretrained(directory)
    return hf_model, import_hf_model(directory, dropout_rate=0.0)


def hf_inputs(torch, prompts, *, left):
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), PAD, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, prompt in enumerate(prompts):
        span = slice(width - len(prompt), width) if left else slice(0, len(prompt))
        ids[row, span], mask[row, span] = prompt, 1
    return torch.tensor(ids), torch.tensor(mask)


def hf_generate(torch, hf_model, prompts, *, encoder_decoder, **kwargs):
    """HF's generated tokens per returned sequence (cut after EOS), and sequence scores."""
    ids, mask = hf_inputs(torch, prompts, left=not encoder_decoder)
    extra = dict(decoder_start_token_id=0) if encoder_decoder else {}
    with torch.no_grad():
        out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                pad_token_id=PAD, return_dict_in_generate=True,
                                output_scores=True, **extra, **kwargs)
    start = 1 if encoder_decoder else ids.shape[1]
    eos = kwargs.get("eos_token_id")
    sequences = []
    for row in out.sequences.numpy():
        generated = [int(t) for t in row[start:]]
        if eos is not None and eos in generated:
            generated = generated[:generated.index(eos) + 1]
        sequences.append(tuple(generated))
    scores = getattr(out, "sequences_scores", None)
    return sequences, None if scores is None else scores.numpy()


def likely_token(torch, hf_model, prompts, *, encoder_decoder, row, position, **kwargs):
    """A token the method emits: as EOS it makes some sequences stop early."""
    sequences, _ = hf_generate(torch, hf_model, prompts, encoder_decoder=encoder_decoder,
                               do_sample=False, eos_token_id=None, **kwargs)
    return sequences[row * kwargs.get("num_return_sequences", 1)][position]


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_greedy_matches_transformers(family, request, torch):
    hf_model, ours = request.getfixturevalue(family)
    encoder_decoder = family == "t5"
    prompts = T5_PROMPTS if encoder_decoder else GPT2_PROMPTS
    eos = likely_token(torch, hf_model, prompts, encoder_decoder=encoder_decoder, row=0,
                       position=NEW_TOKENS // 2)
    expected, _ = hf_generate(torch, hf_model, prompts, encoder_decoder=encoder_decoder,
                              do_sample=False, eos_token_id=eos)
    results = generate(ours, None, prompts,
                       DecodeConfig(max_new_tokens=NEW_TOKENS, eos_id=eos, pad_id=PAD))
    assert [r.tokens for r in results] == expected
    assert any(len(t) < NEW_TOKENS for t in expected)  # EOS ended at least one row early
    assert [r.completions[0].finish_reason for r in results] == [
        "eos" if t[-1] == eos and len(t) <= NEW_TOKENS else "length" for t in expected]


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_beam_search_matches_transformers_n_best(family, request, torch):
    hf_model, ours = request.getfixturevalue(family)
    encoder_decoder = family == "t5"
    prompts = T5_PROMPTS if encoder_decoder else GPT2_PROMPTS
    eos = likely_token(torch, hf_model, prompts, encoder_decoder=encoder_decoder, row=1,
                       position=0, num_beams=4)
    expected, expected_scores = hf_generate(
        torch, hf_model, prompts, encoder_decoder=encoder_decoder, do_sample=False, num_beams=4,
        num_return_sequences=4, length_penalty=1.0, early_stopping=False, eos_token_id=eos)
    config = DecodeConfig(method="beam", max_new_tokens=NEW_TOKENS, num_beams=4,
                          num_return_sequences=4, length_penalty=1.0, early_stopping=False,
                          eos_id=eos, pad_id=PAD)
    results = generate(ours, None, prompts, config)
    got = [c.tokens for r in results for c in r.completions]
    scores = np.array([c.score for r in results for c in r.completions])
    assert got == expected
    np.testing.assert_allclose(scores, expected_scores, atol=SCORE_TOLERANCE, rtol=0)
    assert any(t[-1] == eos for t in expected)  # some hypotheses finished on EOS


@pytest.mark.parametrize("penalties", [dict(repetition_penalty=1.5),
                                       dict(no_repeat_ngram_size=2),
                                       dict(repetition_penalty=0.7, no_repeat_ngram_size=3)],
                         ids=["repetition", "ngram", "both"])
def test_penalties_match_transformers_greedy(penalties, gpt2, torch):
    hf_model, ours = gpt2
    # Equal lengths: HF counts its left padding as tokens for the penalties; we do not.
    prompts = [[5, 17, 33, 2, 9, 5], [41, 7, 60, 12, 41, 7]]
    expected, _ = hf_generate(torch, hf_model, prompts, encoder_decoder=False, do_sample=False,
                              eos_token_id=None, **penalties)
    results = generate(ours, None, prompts,
                       DecodeConfig(max_new_tokens=NEW_TOKENS, pad_id=PAD, **penalties))
    assert [r.tokens for r in results] == expected
    unpenalised = generate(ours, None, prompts, DecodeConfig(max_new_tokens=NEW_TOKENS))
    assert [r.tokens for r in unpenalised] != expected  # the penalties changed something


def test_beam_with_penalties_matches_transformers(t5, torch):
    hf_model, ours = t5
    penalties = dict(repetition_penalty=1.3, no_repeat_ngram_size=2)
    expected, expected_scores = hf_generate(
        torch, hf_model, T5_PROMPTS, encoder_decoder=True, do_sample=False, num_beams=3,
        num_return_sequences=2, eos_token_id=None, **penalties)
    config = DecodeConfig(method="beam", max_new_tokens=NEW_TOKENS, num_beams=3,
                          num_return_sequences=2, **penalties)
    results = generate(ours, None, T5_PROMPTS, config)
    assert [c.tokens for r in results for c in r.completions] == expected
    np.testing.assert_allclose([c.score for r in results for c in r.completions],
                               expected_scores, atol=SCORE_TOLERANCE, rtol=0)
