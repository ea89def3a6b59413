"""`DecodingEngine`: one model's decoding and scoring, with the compiled programs it owns.

Build one engine per model and keep it: it holds the parameters (scanned
layers unstacked once, on first use), the vocabulary and its EOS default,
and a `ModelPrograms` that compiles each program once per static settings
and shape bucket. Repeated `generate`/`score` calls with the same shapes
compile nothing (`compilations` counts what was compiled); new weights of
the same model (a later training step, another checkpoint) go through
`with_params`, which shares the programs. The online serving engine builds
on this object.

Requests are validated one by one before anything runs: a bad request
(an empty prompt, or one longer than the cache) is returned with its own
`error` and the rest of the batch is decoded normally. The valid ones are
batched (decoder-only prompts left-padded, encoder inputs right-padded, both
to a multiple of `LENGTH_BUCKET` so similar batches reuse one compiled
program) and decoded by one program: prefill, then a `while_loop` over a
preallocated KV cache.

Decoding runs wherever the parameters live: pass parameters sharded on a
training mesh and a model built with that mesh's `LogicalSharder`, and the
cache and activations are laid out by the same rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any, Protocol, Sequence

import jax
import numpy as np
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.inference import stopping
from llmos_jax.inference.completions import Completion, RequestResult, TargetScore
from llmos_jax.inference.decode_config import DecodeConfig, with_default_eos
from llmos_jax.inference.decode_programs import ModelPrograms, arguments_key
from llmos_jax.inference.decoding_model import require_generation

LENGTH_BUCKET = 8
Params = Any


class Vocabulary(Protocol):
    """The part of a seqio vocabulary decoding uses (`eos_id` is read when present)."""

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


Prompt = str | Sequence[int]


class DecodingEngine:
    """Decodes and scores with one model's weights; owns that model's compiled programs.

    Args:
      model: A `DecoderLM` or `EncoderDecoderLM` (its graph; its weights are
        used when `params` is None). The engine keeps its graph and config,
        not the module.
      params: Parameters as a pure dict or `nnx.State` (e.g. a train state's
        `params`, possibly sharded), or None.
      vocabulary: Encodes string prompts, decodes completions to text, and
        gives the default EOS (`decode_config`).

    Attributes:
      eos_id: The vocabulary's EOS id (None without one): where decoding stops
        unless a `DecodeConfig` chooses its own `eos_id` (`decode_config`).
    """

    def __init__(self, model: nnx.Module, params: Params | None = None, *,
                 vocabulary: Vocabulary | None = None):
        require_generation(model)
        if params is None:
            params = nnx.state(model, nnx.Param)
        self._set_up(ModelPrograms(model), params, vocabulary)

    def _set_up(self, programs: ModelPrograms, params: Params,
                vocabulary: Vocabulary | None) -> None:
        if isinstance(params, nnx.State):
            params = nnx.to_pure_dict(params)
        self._programs = programs
        self.model_config = programs.config
        self.encoder_decoder = programs.encoder_decoder
        self.vocabulary = vocabulary
        eos_id = getattr(vocabulary, "eos_id", None)
        self.eos_id = None if eos_id is None else int(eos_id)
        self._params = params
        self._params_key = arguments_key(params)
        self._decoding: tuple[Params, Hashable] | None = None  # unstacked on first use

    @property
    def compilations(self) -> int:
        """Programs compiled so far for this engine's model graph (shared with `with_params`)."""
        return self._programs.compilations

    def with_params(self, params: Params, *,
                    vocabulary: Vocabulary | None = None) -> DecodingEngine:
        """An engine for new weights of the same model graph, sharing its compiled programs.

        `params` must have this model's structure (e.g. a later training
        step's weights); `vocabulary`: None keeps this engine's.
        """
        engine = object.__new__(DecodingEngine)
        engine._set_up(self._programs, params,
                       self.vocabulary if vocabulary is None else vocabulary)
        return engine

    def decode_config(self, config: DecodeConfig | None = None, *,
                      eos_bound: bool | None = None) -> DecodeConfig:
        """`config` (default `DecodeConfig()`) stopping at the vocabulary's EOS unless it chose one.

        See `decode_config.with_default_eos` for the rule and `eos_bound`.
        """
        return with_default_eos(config, self.eos_id, eos_bound=eos_bound)

    def generate(self, prompts: Sequence[Prompt], config: DecodeConfig, *,
                 seeds: Sequence[int] | None = None,
                 max_batch_size: int | None = None) -> list[RequestResult]:
        """Continues each prompt with `config`'s method; one `RequestResult` per prompt.

        `config` is used as given (its `eos_id` included; see `decode_config`).

        Args:
          prompts: Token-id sequences, or strings when the engine has a
            vocabulary. For encoder-decoders, the encoder input.
          config: The decoding method and its settings.
          seeds: Per-request sampling seeds (default `config.seed + index`).
          max_batch_size: Decode at most this many requests at once.

        Raises:
          UserError: For settings the model cannot satisfy (e.g. more beams
            than vocabulary entries). Per-request problems are reported in the
            results.
        """
        config.check_vocab(self.model_config.vocab_size)
        if seeds is not None and len(seeds) != len(prompts):
            raise UserError(f"generate got {len(seeds)} seeds for {len(prompts)} prompts; give "
                            "one seed per prompt or none.")
        capacity = _capacity(self.model_config, config)
        results: list[RequestResult | None] = [None] * len(prompts)
        token_lists: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            tokens, error = _prompt_tokens(prompt, self.vocabulary, i, capacity,
                                           self.encoder_decoder)
            if error is not None:
                results[i] = RequestResult(error=error)
            else:
                token_lists[i] = tokens
        valid = list(token_lists)
        step = max_batch_size or max(len(valid), 1)
        for begin in range(0, len(valid), step):
            chunk = valid[begin:begin + step]
            chunk_seeds = [config.seed + i if seeds is None else int(seeds[i]) for i in chunk]
            decoded = self._decode_batch(config, capacity, [token_lists[i] for i in chunk],
                                         chunk_seeds)
            for i, result in zip(chunk, decoded):
                results[i] = result
        return results  # type: ignore[return-value]

    def score(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
              decoder_start_id: int = 0, pad_id: int = 0) -> list[TargetScore]:
        """log p(target | prompt) for each pair, in one teacher-forced pass per batch.

        For a decoder-only model the prompt and target are concatenated and
        the target tokens' log-probabilities summed; for an encoder-decoder
        the prompt is the encoder input and the decoder reads the target
        shifted right after `decoder_start_id`. A request that does not fit
        the model gets its own error; the others are scored.
        """
        if len(prompts) != len(targets):
            raise ValueError(f"score got {len(prompts)} prompts and {len(targets)} targets")
        encoder_decoder = self.encoder_decoder
        max_len = self.model_config.max_len
        results: list[TargetScore | None] = [None] * len(prompts)
        good = []
        for i, (prompt, target) in enumerate(zip(prompts, targets)):
            # A decoder-only model reads prompt + target minus the last target token.
            length = len(prompt) + (0 if encoder_decoder else len(target) - 1)
            if not encoder_decoder and not prompt:
                results[i] = TargetScore(None, len(target), f"request {i}: the prompt is empty; "
                                         "the first target token needs context (e.g. a BOS id).")
            elif length > max_len or (encoder_decoder and len(target) > max_len):
                results[i] = TargetScore(None, len(target), f"request {i}: {length} tokens do "
                                         f"not fit the model's max_len={max_len}; shorten the "
                                         "request.")
            else:
                good.append(i)
        if not good:
            return results  # type: ignore[return-value]
        arrays = _score_arrays([list(prompts[i]) for i in good], [list(targets[i]) for i in good],
                               encoder_decoder, decoder_start_id, pad_id)
        sums, correct = (np.asarray(x) for x in jax.device_get(self._programs.score(
            encoder_decoder, self._params, self._params_key, *arrays)))
        for row, i in enumerate(good):
            results[i] = TargetScore(float(sums[row]), len(targets[i]),
                                     num_correct=int(round(float(correct[row]))))
        return results  # type: ignore[return-value]

    def _decoding_params(self) -> tuple[Params, Hashable]:
        if self._decoding is None:
            params = self._programs.decoding_params(self._params, self._params_key)
            key = self._params_key if params is self._params else arguments_key(params)
            self._decoding = (params, key)
        return self._decoding

    def _decode_batch(self, config: DecodeConfig, capacity: int, token_lists: list[list[int]],
                      seeds: list[int]) -> list[RequestResult]:
        encoder_decoder = self.encoder_decoder
        batch = len(token_lists)
        width = _round_up(max(len(t) for t in token_lists), LENGTH_BUCKET)
        prompt = np.full((batch, width), config.pad_id, np.int32)
        prompt_valid = np.zeros((batch, width), bool)
        for row, tokens in enumerate(token_lists):
            if encoder_decoder:  # right-padded encoder input
                prompt[row, :len(tokens)], prompt_valid[row, :len(tokens)] = tokens, True
            else:  # left-padded: every row's next token goes to the same slot
                prompt[row, width - len(tokens):] = tokens
                prompt_valid[row, width - len(tokens):] = True
        if encoder_decoder:
            prefix = np.full((batch, 1), config.decoder_start_id, np.int32)
            prefix_valid = np.ones((batch, 1), bool)
            budgets = np.full((batch,), config.max_new_tokens, np.int32)
        else:
            prefix, prefix_valid = prompt, prompt_valid
            budgets = np.array([min(config.max_new_tokens, capacity - len(t))
                                for t in token_lists], np.int32)
        num_steps = int(budgets.max())
        repeats = 1 if config.method == "beam" else config.num_return_sequences
        sample_index = np.tile(np.arange(repeats, dtype=np.int32), batch)

        def rows(a: np.ndarray) -> np.ndarray:
            return np.repeat(a, repeats, axis=0)

        params, params_key = self._decoding_params()
        out = jax.device_get(self._programs.decode(
            _static_part(config), num_steps, params, params_key, rows(prefix),
            rows(prefix_valid), rows(prompt), rows(prompt_valid), rows(budgets),
            rows(np.asarray(seeds, np.uint32)), sample_index))
        start = prefix.shape[1]
        results = []
        for request in range(batch):
            completions = []
            for j in range(config.num_return_sequences):
                if config.method == "beam":
                    tokens = out["tokens"][request, j]
                    length, score, reason = (out["lengths"][request, j],
                                             out["scores"][request, j], out["finish"][request, j])
                else:
                    r = request * repeats + j
                    tokens, length, score, reason = (out["tokens"][r], out["generated"][r],
                                                     out["log_likelihood"][r], out["finish"][r])
                ids = tuple(int(t) for t in tokens[start:start + int(length)])
                completions.append(Completion(
                    tokens=ids, score=float(score),
                    finish_reason=stopping.FINISH_NAMES.get(int(reason), "length"),
                    text=_text(ids, int(reason), config, self.vocabulary)))
            results.append(RequestResult(completions=tuple(completions)))
        return results


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


def _score_arrays(prompts: list[list[int]], targets: list[list[int]], encoder_decoder: bool,
                  decoder_start_id: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """The padded batch the score program reads (see `ModelPrograms.score`)."""
    batch = len(prompts)
    if encoder_decoder:
        enc_width = _round_up(max(max(len(p) for p in prompts), 1), LENGTH_BUCKET)
        dec_width = _round_up(max(max(len(t) for t in targets), 1), LENGTH_BUCKET)
        encoder = np.full((batch, enc_width), pad_id, np.int32)
        encoder_valid = np.zeros((batch, enc_width), np.int32)
        decoder = np.full((batch, dec_width), pad_id, np.int32)
        labels = np.full((batch, dec_width), pad_id, np.int32)
        weights = np.zeros((batch, dec_width), np.float32)
        for row, (prompt, target) in enumerate(zip(prompts, targets)):
            encoder[row, :len(prompt)], encoder_valid[row, :len(prompt)] = prompt, 1
            decoder[row, :len(target)] = ([decoder_start_id] + target)[:len(target)]
            labels[row, :len(target)], weights[row, :len(target)] = target, 1.0
        return encoder, encoder_valid, decoder, labels, weights
    width = _round_up(max(max(len(p) + len(t) - 1 for p, t in zip(prompts, targets)), 1),
                      LENGTH_BUCKET)
    inputs = np.full((batch, width), pad_id, np.int32)
    labels = np.full((batch, width), pad_id, np.int32)
    weights = np.zeros((batch, width), np.float32)
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        sequence = prompt + target
        inputs[row, :len(sequence) - 1] = sequence[:-1]
        labels[row, :len(sequence) - 1] = sequence[1:]
        weights[row, len(prompt) - 1:len(sequence) - 1] = 1.0
    return inputs, labels, weights


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
