"""How to decode: the method and its knobs, validated when built.

One frozen dataclass covers greedy decoding, sampling (temperature, top-k,
top-p, combinable, per-request seeds) and beam search (beam size, length
penalty, early stopping, n-best), plus the penalties and stopping rules they
share. Semantics follow Hugging Face `generate` so results can be compared
with it token for token.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from llmos_jax.errors import UserError

Method = Literal["greedy", "sample", "beam"]
EarlyStopping = bool | Literal["never"]


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings; invalid values raise `UserError` naming the field.

    Attributes:
      max_new_tokens: Most tokens generated per request.
      method: "greedy", "sample" or "beam".
      eos_id: A generated `eos_id` ends the sequence (kept as its last token).
        None: only `max_new_tokens`, stop sequences or the cache end it.
      stop_sequences: Token-id sequences that end a sequence once generated
        (kept in its tokens, removed from its text).
      temperature: Sampling temperature (> 0; "sample" only).
      top_k: Sample among the k most likely tokens (None: all).
      top_p: Nucleus sampling: the smallest set of most likely tokens whose
        probability reaches `top_p`, in (0, 1] (None: all). Applied after
        `top_k`, as Hugging Face does.
      seed: Sampling seed of request i is `seed + i` unless `generate` gets
        per-request seeds; a request's sample does not depend on the rest of
        its batch.
      num_beams: Beam size ("beam" only).
      length_penalty: Beam hypotheses are ranked by
        `sum_logprobs / generated_length ** length_penalty` (HF's alpha).
      early_stopping: Beam search stops a request when `num_beams` hypotheses
        are finished (True), when the best running beam cannot beat the worst
        finished one at the current length (False, HF's default heuristic), or
        judged at the longest possible length ("never").
      num_return_sequences: The n best hypotheses (beam) or n independent
        samples ("sample") per request, each with its score.
      repetition_penalty: CTRL/HF penalty (> 0) on tokens already in the
        sequence (prompt included): positive logits divided by it, negative
        ones multiplied. 1.0 is off.
      no_repeat_ngram_size: Never generate an n-gram of this size that
        already occurs in the sequence (prompt included). 0 is off.
      max_cache_len: Positions a request may occupy (prompt plus generated
        tokens; the encoder input for encoder-decoders). None: the model's
        `max_len`. A longer prompt is reported as that request's error.
      pad_id: Fills finished rows, and starts T5-style decoders.
      decoder_start_id: First decoder token of encoder-decoders (T5: pad, 0).
    """

    max_new_tokens: int = 32
    method: Method = "greedy"
    eos_id: int | None = None
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_cache_len: int | None = None
    pad_id: int = 0
    decoder_start_id: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "sample", "beam"):
            raise UserError(f"DecodeConfig.method={self.method!r} is not one of greedy, sample, "
                            "beam.")
        if self.max_new_tokens <= 0:
            raise UserError(f"DecodeConfig.max_new_tokens must be positive, got "
                            f"{self.max_new_tokens}.")
        if not self.temperature > 0:
            raise UserError(f"DecodeConfig.temperature must be > 0, got {self.temperature}; use "
                            "method='greedy' for argmax decoding.")
        if self.top_k is not None and self.top_k <= 0:
            raise UserError(f"DecodeConfig.top_k must be a positive integer or None, got "
                            f"{self.top_k}.")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UserError(f"DecodeConfig.top_p must be in (0, 1], got {self.top_p}; 1.0 (or "
                            "None) keeps every token.")
        if self.num_beams <= 0:
            raise UserError(f"DecodeConfig.num_beams must be positive, got {self.num_beams}.")
        if self.early_stopping not in (True, False, "never"):
            raise UserError(f"DecodeConfig.early_stopping={self.early_stopping!r} is not one of "
                            "True, False, 'never'.")
        if self.num_return_sequences <= 0:
            raise UserError("DecodeConfig.num_return_sequences must be positive, got "
                            f"{self.num_return_sequences}.")
        if self.method == "greedy" and self.num_return_sequences != 1:
            raise UserError("DecodeConfig.num_return_sequences must be 1 with method='greedy' "
                            "(greedy decoding has one answer); use 'beam' or 'sample'.")
        if self.method == "beam" and self.num_return_sequences > self.num_beams:
            raise UserError(f"DecodeConfig.num_return_sequences={self.num_return_sequences} is "
                            f"larger than num_beams={self.num_beams}.")
        if not self.repetition_penalty > 0:
            raise UserError("DecodeConfig.repetition_penalty must be > 0 (1.0 is off), got "
                            f"{self.repetition_penalty}.")
        if self.no_repeat_ngram_size < 0:
            raise UserError("DecodeConfig.no_repeat_ngram_size must be >= 0 (0 is off), got "
                            f"{self.no_repeat_ngram_size}.")
        if self.max_cache_len is not None and self.max_cache_len <= 1:
            raise UserError(f"DecodeConfig.max_cache_len must be > 1, got {self.max_cache_len}.")
        stops = tuple(tuple(int(t) for t in stop) for stop in self.stop_sequences)
        if any(len(stop) == 0 for stop in stops):
            raise UserError("DecodeConfig.stop_sequences contains an empty sequence.")
        object.__setattr__(self, "stop_sequences", stops)

    def check_vocab(self, vocab_size: int) -> None:
        """Raises `UserError` for settings the model's vocabulary cannot satisfy."""
        if self.method == "beam" and self.num_beams > vocab_size:
            raise UserError(f"DecodeConfig.num_beams={self.num_beams} is larger than the "
                            f"vocabulary ({vocab_size} tokens); use at most {vocab_size} beams.")
        for name in ("eos_id", "pad_id", "decoder_start_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < vocab_size:
                raise UserError(f"DecodeConfig.{name}={value} is outside the vocabulary "
                                f"[0, {vocab_size}).")
        for stop in self.stop_sequences:
            if any(not 0 <= t < vocab_size for t in stop):
                raise UserError(f"DecodeConfig.stop_sequences entry {stop} has ids outside the "
                                f"vocabulary [0, {vocab_size}).")

    @property
    def rows_per_request(self) -> int:
        """Decoding rows one request occupies (beams, or independent samples)."""
        if self.method == "beam":
            return self.num_beams
        return self.num_return_sequences


def with_default_eos(config: DecodeConfig | None, vocabulary_eos_id: int | None, *,
                     eos_bound: bool | None = None) -> DecodeConfig:
    """`config` stopping at the vocabulary's EOS, unless the user chose `eos_id` themselves.

    The one EOS rule of every decoding entry point (`llmos infer`/`eval`,
    evaluation during training, evaluation predictors, `DecodingEngine`):
    a chosen `eos_id` wins; otherwise decoding stops at the vocabulary's EOS.

    Args:
      config: The settings; None: `DecodeConfig()`.
      vocabulary_eos_id: The vocabulary's EOS id; None when it has none
        (then `config` is returned as is).
      eos_bound: Whether the user chose `config.eos_id`, which may be None
        to mean "never stop at EOS" (e.g. `DecodeConfig.eos_id = None` bound
        in gin). None: chosen exactly when `config.eos_id` is not None.
    """
    config = DecodeConfig() if config is None else config
    if eos_bound is None:
        eos_bound = config.eos_id is not None
    if eos_bound or vocabulary_eos_id is None:
        return config
    return dataclasses.replace(config, eos_id=int(vocabulary_eos_id))
