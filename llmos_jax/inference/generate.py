"""`generate`: prompts in, n-best completions (token ids, scores, texts) out.

Requests are validated one by one before anything runs: a bad request
(an empty prompt, or one longer than the cache) is returned with its own
`error` and the rest of the batch is decoded normally. The valid ones are
batched (decoder-only prompts left-padded, encoder inputs right-padded, both
to a multiple of `_LENGTH_BUCKET` so similar batches reuse one compiled
program) and decoded by one jitted program: prefill, then a `while_loop`
over a preallocated KV cache (`sampling_loop` or `beam_search`).

Decoding runs wherever the parameters live: pass parameters sharded on a
training mesh and a model built with that mesh's `LogicalSharder`, and the
cache and activations are laid out by the same rules.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, Sequence

import jax
import numpy as np
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.inference import stopping
from llmos_jax.inference.beam_search import beam_decode
from llmos_jax.inference.completions import Completion, RequestResult
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_model import (
    decoding_adapter,
    is_encoder_decoder,
    require_generation,
    unstack_params,
    unstacked_structure,
)
from llmos_jax.inference.sampling_loop import sampling_decode

_LENGTH_BUCKET = 8


class Vocabulary(Protocol):
    """The part of a seqio vocabulary `generate` uses."""

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


Prompt = str | Sequence[int]


def generate(model: nnx.Module, params: Any, prompts: Sequence[Prompt], config: DecodeConfig, *,
             vocabulary: Vocabulary | None = None, seeds: Sequence[int] | None = None,
             max_batch_size: int | None = None) -> list[RequestResult]:
    """Continues each prompt with `config`'s method; one `RequestResult` per prompt.

    Args:
      model: A `DecoderLM` or `EncoderDecoderLM` (its graph; its weights are
        used when `params` is None).
      params: Parameters as a pure dict or `nnx.State` (e.g. a train state's
        `params`, possibly sharded), or None.
      prompts: Token-id sequences, or strings when `vocabulary` is given. For
        encoder-decoders, the encoder input.
      config: The decoding method and its settings.
      vocabulary: Encodes string prompts and decodes completions to text.
      seeds: Per-request sampling seeds (default `config.seed + index`).
      max_batch_size: Decode at most this many requests at once.

    Raises:
      UserError: For settings the model cannot satisfy (e.g. more beams than
        vocabulary entries). Per-request problems are reported in the results.
    """
    require_generation(model)
    model_config = model.config
    config.check_vocab(model_config.vocab_size)
    if seeds is not None and len(seeds) != len(prompts):
        raise UserError(f"generate got {len(seeds)} seeds for {len(prompts)} prompts; give one "
                        "seed per prompt or none.")
    if params is None:
        params = nnx.state(model, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    encoder_decoder = is_encoder_decoder(model)
    capacity = _capacity(model_config, config)
    results: list[RequestResult | None] = [None] * len(prompts)
    token_lists: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        tokens, error = _prompt_tokens(prompt, vocabulary, i, capacity, encoder_decoder)
        if error is not None:
            results[i] = RequestResult(error=error)
        else:
            token_lists[i] = tokens
    valid = list(token_lists)
    step = max_batch_size or max(len(valid), 1)
    decode = functools.partial(_decode_batch, model, params, config, vocabulary, capacity,
                               encoder_decoder)
    for begin in range(0, len(valid), step):
        chunk = valid[begin:begin + step]
        chunk_seeds = [config.seed + i if seeds is None else int(seeds[i]) for i in chunk]
        for i, result in zip(chunk, decode([token_lists[i] for i in chunk], chunk_seeds)):
            results[i] = result
    return results  # type: ignore[return-value]


def _capacity(model_config, config: DecodeConfig) -> int:
    capacity = config.max_cache_len or model_config.max_len
    if (getattr(model_config, "position_embedding", None) == "learned"
            and capacity > model_config.max_len):
        raise UserError(f"DecodeConfig.max_cache_len={capacity} exceeds the model's learned "
                        f"position table (TransformerConfig.max_len={model_config.max_len}); "
                        f"use at most {model_config.max_len}.")
    return capacity


def _prompt_tokens(prompt: Prompt, vocabulary: Vocabulary | None, index: int, capacity: int,
                   encoder_decoder: bool) -> tuple[list[int], str | None]:
    if isinstance(prompt, str):
        if vocabulary is None:
            raise UserError(f"prompt {index} is text but generate got no vocabulary; pass "
                            "vocabulary=... or token ids.")
        tokens = [int(t) for t in vocabulary.encode(prompt)]
    else:
        tokens = [int(t) for t in prompt]
    if not tokens:
        return tokens, (f"request {index}: the prompt is empty; give at least one token "
                        "(e.g. a BOS id).")
    if encoder_decoder and len(tokens) > capacity:
        return tokens, (f"request {index}: the encoder input has {len(tokens)} tokens, more than "
                        f"the {capacity} the model takes; shorten it or raise "
                        "DecodeConfig.max_cache_len.")
    if not encoder_decoder and len(tokens) >= capacity:
        return tokens, (f"request {index}: the prompt has {len(tokens)} tokens but the cache holds "
                        f"{capacity} positions (prompt plus generated tokens), leaving no room to "
                        "generate; shorten the prompt or raise DecodeConfig.max_cache_len "
                        "(TransformerConfig.max_len for learned positions).")
    return tokens, None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _decode_batch(model, params, config: DecodeConfig, vocabulary, capacity: int,
                  encoder_decoder: bool, token_lists: list[list[int]],
                  seeds: list[int]) -> list[RequestResult]:
    batch = len(token_lists)
    width = _round_up(max(len(t) for t in token_lists), _LENGTH_BUCKET)
    prompt = np.full((batch, width), config.pad_id, np.int32)
    prompt_valid = np.zeros((batch, width), bool)
    for row, tokens in enumerate(token_lists):
        if encoder_decoder:  # right-padded encoder input
            prompt[row, :len(tokens)], prompt_valid[row, :len(tokens)] = tokens, True
        else:  # left-padded: every row's next token goes to the same slot
            prompt[row, width - len(tokens):], prompt_valid[row, width - len(tokens):] = tokens, True
    if encoder_decoder:
        prefix = np.full((batch, 1), config.decoder_start_id, np.int32)
        prefix_valid = np.ones((batch, 1), bool)
        budgets = np.full((batch,), config.max_new_tokens, np.int32)
    else:
        prefix, prefix_valid = prompt, prompt_valid
        budgets = np.array([min(config.max_new_tokens, capacity - len(t)) for t in token_lists],
                           np.int32)
    num_steps = int(budgets.max())
    repeats = 1 if config.method == "beam" else config.num_return_sequences
    sample_index = np.tile(np.arange(repeats, dtype=np.int32), batch)

    def rows(a: np.ndarray) -> np.ndarray:
        return np.repeat(a, repeats, axis=0)

    graphdef, params = _decoding_params(model, params)
    run = _compiled(graphdef, _static_part(config), num_steps)
    out = jax.device_get(run(params, rows(prefix), rows(prefix_valid), rows(prompt),
                             rows(prompt_valid), rows(budgets),
                             rows(np.asarray(seeds, np.uint32)), sample_index))
    start = prefix.shape[1]
    results = []
    for request in range(batch):
        completions = []
        for j in range(config.num_return_sequences):
            if config.method == "beam":
                tokens = out["tokens"][request, j]
                length, score, reason = (out["lengths"][request, j], out["scores"][request, j],
                                         out["finish"][request, j])
            else:
                r = request * repeats + j
                tokens, length, score, reason = (out["tokens"][r], out["generated"][r],
                                                 out["log_likelihood"][r], out["finish"][r])
            ids = tuple(int(t) for t in tokens[start:start + int(length)])
            completions.append(Completion(
                tokens=ids, score=float(score),
                finish_reason=stopping.FINISH_NAMES.get(int(reason), "length"),
                text=_text(ids, int(reason), config, vocabulary)))
        results.append(RequestResult(completions=tuple(completions)))
    return results


def _text(ids: tuple[int, ...], reason: int, config: DecodeConfig,
          vocabulary: Vocabulary | None) -> str | None:
    if vocabulary is None:
        return None
    if reason == stopping.EOS:
        ids = ids[:-1]
    elif reason == stopping.STOP:
        for stop in config.stop_sequences:
            if ids[-len(stop):] == stop:
                ids = ids[:-len(stop)]
                break
    return vocabulary.decode(list(ids))


def _static_part(config: DecodeConfig) -> DecodeConfig:
    """The config without fields that only the host uses (one compile for all their values)."""
    return dataclasses.replace(config, seed=0, max_cache_len=None, max_new_tokens=1)


# The last stacked parameters unstacked, with the leaves they came from: repeated
# `generate` calls on the same weights skip the copy (jax arrays are immutable,
# so the same leaf objects mean the same values).
_last_unstacked: list = []


def _decoding_params(model, params):
    """The graph to decode with and its parameters, with scanned layers unstacked once."""
    if not model.config.scan_layers:
        return nnx.graphdef(model), params
    graphdef, unstack = _unstacker(type(model), model.config, model.shard)
    leaves = jax.tree.leaves(params)
    if _last_unstacked and len(_last_unstacked[0]) == len(leaves) and all(
            a is b for a, b in zip(_last_unstacked[0], leaves)):
        return graphdef, _last_unstacked[1]
    _last_unstacked.clear()
    unstacked = unstack(params)
    _last_unstacked.extend([leaves, unstacked])
    return graphdef, unstacked


@functools.lru_cache(maxsize=8)
def _unstacker(model_type: type, model_config, shard):
    """The unstacked graph, and a jitted function that unstacks parameters into it."""
    graphdef, abstract = unstacked_structure(model_type, model_config, shard)
    return graphdef, jax.jit(lambda params: unstack_params(params, abstract))


@functools.lru_cache(maxsize=16)
def _compiled(graphdef: nnx.GraphDef, config: DecodeConfig, num_steps: int):
    """The jitted decode program for one model graph, method and step bound."""

    def run(params, prefix, prefix_valid, prompt, prompt_valid, budgets, seeds, sample_index):
        model = nnx.merge(graphdef, params)
        adapter = decoding_adapter(model, config.decoder_start_id)
        if config.method == "beam":
            out = beam_decode(adapter, prefix, prefix_valid, prompt, prompt_valid, budgets,
                              config, num_steps)
            return {"tokens": out.tokens, "scores": out.scores, "lengths": out.lengths,
                    "finish": out.finish}
        row_keys = None
        if config.method == "sample":
            row_keys = jax.vmap(lambda s, j: jax.random.fold_in(jax.random.key(s), j))(
                seeds, sample_index)
        out = sampling_decode(adapter, prefix, prefix_valid, prompt, prompt_valid, budgets,
                              row_keys, config, num_steps)
        return {"tokens": out.tokens, "generated": out.generated, "finish": out.finish,
                "log_likelihood": out.log_likelihood}

    return jax.jit(run)
