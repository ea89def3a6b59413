"""Predict and score functions for the evaluator, built from a model and its parameters.

The evaluator hands a model batches of task examples (dicts of NumPy values,
in split order) and wants one prediction, or one score row, per example.
These factories close over a model and return such functions:

- :func:`sequence_classifier`: an encoder classifier's argmax label, as the
  label id in decimal text (the form the classification tasks' gold takes).
- :func:`token_classifier`: a tagger's argmax at each word's first
  sub-token, mapped back to one IOB2 tag per word (space-joined), so span F1
  is over all words even where the sequence length cut some away.
- :func:`generator`: text from a :class:`llmos_jax.inference.DecodingEngine`
  (encoder-decoder, or decoder-only continuing a prompt).
- :func:`target_scorer`: ``(log_likelihood, num_tokens, num_correct)`` of each example's
  targets from :meth:`llmos_jax.inference.DecodingEngine.score`, for perplexity.

Each function builds its engine once, so every batch of a split reuses its
compiled programs; pass ``engine=`` (one kept across evaluations, e.g. during
training) to reuse them across calls too.

Encoder batches are cut to ``sequence_length`` and padded, rows included, to
a fixed ``[batch_size, sequence_length]``, so a whole split runs on one
compiled program; the extra rows are dropped from the outputs. A model built
with a mesh's ``LogicalSharder`` and sharded parameters runs sharded, then
``batch_size`` must be a multiple of the mesh's data-parallel size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.data.finetune_tasks.conll2003 import word_tags_from_tokens
from llmos_jax.data.finetune_tasks.example_arrays import pad_rows
from llmos_jax.errors import UserError
from llmos_jax.inference import DecodeConfig, DecodingEngine
from llmos_jax.objectives.base import padding_segments

Example = Mapping[str, Any]
PredictFn = Callable[[list[Example]], list[Any]]
ScoreFn = Callable[[list[Example]], list[tuple[float, ...]]]
Params = Any

INPUT_IDS = "input_ids"
TOKEN_TYPES = "token_type_ids"
LABEL_WEIGHTS = "label_weights"
WORDS = "words"


def pure_params(model: nnx.Module, params: Params | None) -> Params:
    """``params`` as a pure dict; the model's own weights when ``params`` is None."""
    if params is None:
        params = nnx.state(model, nnx.Param)
    return nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params


@functools.lru_cache(maxsize=8)
def _encoder_logits_fn(graphdef: nnx.GraphDef) -> Callable:
    """Jitted ``(params, input_ids, token_type_ids) -> logits``, inputs as the encoder objectives feed them."""

    @jax.jit
    def run(params, input_ids, token_type_ids):
        model = nnx.merge(graphdef, params)
        return model(input_ids, token_type_ids=token_type_ids,
                     segment_ids=padding_segments(input_ids))

    return run


def _check_batching(name: str, sequence_length: int, batch_size: int) -> None:
    if sequence_length <= 0 or batch_size <= 0:
        raise UserError(f"{name}: sequence_length={sequence_length} and batch_size={batch_size} "
                        "must both be positive.")


def _padded_batch(examples: list[Example], sequence_length: int, batch_size: int, name: str
                  ) -> dict[str, np.ndarray]:
    """Token features of ``examples`` as ``[batch_size, sequence_length]``, extra rows all zero."""
    if len(examples) > batch_size:
        raise UserError(f"{name} got {len(examples)} examples but was built for batches of at "
                        f"most {batch_size}; evaluate with batch_size={batch_size} or less.")
    if INPUT_IDS not in examples[0]:
        raise UserError(f"{name} reads the feature {INPUT_IDS!r}, but the task's examples have "
                        f"{sorted(examples[0])}; evaluate an encoder task (e.g. sst2_minilm).")
    rows = pad_rows(examples, sequence_length)
    return {key: np.pad(value, [(0, batch_size - len(examples))] + [(0, 0)] * (value.ndim - 1))
            for key, value in rows.items()}


def _argmax_labels(model: nnx.Module, params: Params, batch: dict[str, np.ndarray]) -> np.ndarray:
    logits = _encoder_logits_fn(nnx.graphdef(model))(
        params, jnp.asarray(batch[INPUT_IDS]),
        None if TOKEN_TYPES not in batch else jnp.asarray(batch[TOKEN_TYPES]))
    return np.asarray(jax.device_get(jnp.argmax(logits, axis=-1)))


def sequence_classifier(model: nnx.Module, params: Params | None = None, *, sequence_length: int,
                        batch_size: int = 32) -> PredictFn:
    """A predict function giving each example's argmax class id, as text (``"0"``, ``"1"``...).

    Args:
      model: An ``EncoderForSequenceClassification`` (its graph; its weights
        when ``params`` is None).
      params: Parameters as a pure dict or ``nnx.State``, possibly sharded.
      sequence_length: ``input_ids`` (and ``token_type_ids``) are cut to this
        many tokens, as in training.
      batch_size: Rows per forward pass; examples per call must not exceed it.
    """
    _check_batching("sequence_classifier", sequence_length, batch_size)
    params = pure_params(model, params)

    def predict(examples: list[Example]) -> list[str]:
        batch = _padded_batch(examples, sequence_length, batch_size, "sequence_classifier")
        labels = _argmax_labels(model, params, batch)
        return [str(int(label)) for label in labels[:len(examples)]]

    return predict


def _num_words(example: Example, weights: np.ndarray) -> int:
    """Words of the sentence: from its ``words`` text, else the labelled positions."""
    words = example.get(WORDS)
    if words is None:
        return int(np.count_nonzero(weights > 0))
    return len((words.decode("utf-8") if isinstance(words, bytes) else str(words)).split())


def token_classifier(model: nnx.Module, params: Params | None = None, *, sequence_length: int,
                     batch_size: int = 32) -> PredictFn:
    """A predict function giving one IOB2 tag per word, space-joined (``"B-PER I-PER O"``).

    Each word's tag is the argmax at its first sub-token (the positions where
    ``label_weights`` is 1); words whose first sub-token the sequence length
    cut away are tagged ``O``, so every word of ``words`` gets a tag.

    Args:
      model: An ``EncoderForTokenClassification`` whose classes index
        ``conll2003.LABELS``.
      params: Parameters as a pure dict or ``nnx.State``, possibly sharded.
      sequence_length: Token features are cut to this many tokens.
      batch_size: Rows per forward pass; examples per call must not exceed it.
    """
    _check_batching("token_classifier", sequence_length, batch_size)
    params = pure_params(model, params)

    def predict(examples: list[Example]) -> list[str]:
        batch = _padded_batch(examples, sequence_length, batch_size, "token_classifier")
        if LABEL_WEIGHTS not in batch:
            raise UserError(f"token_classifier needs {LABEL_WEIGHTS!r} (1 on each word's first "
                            f"sub-token) in the task's examples; they have {sorted(examples[0])}.")
        labels = _argmax_labels(model, params, batch)
        return [" ".join(word_tags_from_tokens(labels[row], batch[LABEL_WEIGHTS][row],
                                               _num_words(example, batch[LABEL_WEIGHTS][row])))
                for row, example in enumerate(examples)]

    return predict


def _token_ids(example: Example, feature: str, name: str) -> list[int]:
    if feature not in example:
        raise UserError(f"{name} reads the feature {feature!r}, but the task's examples have "
                        f"{sorted(example)}; set the feature name or use a text-to-text task.")
    return np.asarray(example[feature]).astype(np.int64).tolist()


def generator(model: nnx.Module, params: Params | None, *, vocabulary, decode_config: DecodeConfig,
              inputs_feature: str = "inputs", max_input_length: int | None = None,
              batch_size: int = 32, engine: DecodingEngine | None = None) -> PredictFn:
    """A predict function giving each example's generated text (best completion).

    Args:
      model: A ``DecoderLM`` or ``EncoderDecoderLM``.
      params: Parameters as a pure dict or ``nnx.State``, or None.
      vocabulary: Decodes the generated ids to text (the task's targets vocabulary).
      decode_config: How to decode; set ``eos_id`` to the vocabulary's EOS.
      inputs_feature: The token-id feature used as the prompt (encoder input).
      max_input_length: Cut prompts to this many tokens first (as training did).
      batch_size: Requests decoded together.
      engine: An engine of the same model graph whose compiled programs are
        reused with ``params``; None: a new one.

    Raises (when called):
      UserError: a request the model cannot decode (e.g. a prompt filling the cache).
    """
    engine = _engine(model, params, engine, vocabulary)

    def predict(examples: list[Example]) -> list[str]:
        prompts = [_token_ids(e, inputs_feature, "generator")[:max_input_length] for e in examples]
        results = engine.generate(prompts, decode_config, max_batch_size=batch_size)
        for result in results:
            if not result.ok:
                raise UserError(f"generation failed: {result.error}")
        return [result.text for result in results]

    return predict


def target_scorer(model: nnx.Module, params: Params | None, *, inputs_feature: str = "inputs",
                  targets_feature: str = "targets", start_id: int = 0,
                  max_input_length: int | None = None,
                  engine: DecodingEngine | None = None) -> ScoreFn:
    """A score function giving ``(log_likelihood, num_tokens, num_correct)`` per example.

    The rows feed both ``perplexity`` and ``token_accuracy``.

    Encoder-decoders score ``targets`` given ``inputs`` as the encoder
    input. Decoder-only models score ``targets`` after ``inputs`` when the
    example has them, else after ``start_id`` alone: the row seqio's LM
    feature converter trains on (targets shifted right behind a 0).

    Args:
      model: A ``DecoderLM`` or ``EncoderDecoderLM``.
      params: Parameters as a pure dict or ``nnx.State``, or None.
      inputs_feature, targets_feature: Token-id features of the examples.
      start_id: The token before the targets when there are no inputs; the
        encoder-decoder's decoder start id.
      max_input_length: Cut inputs to this many tokens first.
      engine: An engine of the same model graph whose compiled programs are
        reused with ``params``; None: a new one.

    Raises (when called):
      UserError: an example that does not fit the model.
    """
    engine = _engine(model, params, engine, None)

    def score_rows(examples: list[Example]) -> list[tuple[float, float, float]]:
        prompts = [_token_ids(e, inputs_feature, "target_scorer")[:max_input_length]
                   if inputs_feature in e else [start_id] for e in examples]
        targets = [_token_ids(e, targets_feature, "target_scorer") for e in examples]
        results = engine.score(prompts, targets, decoder_start_id=start_id)
        for result in results:
            if result.error is not None:
                raise UserError(f"scoring failed: {result.error}")
        return [(result.log_likelihood, float(result.num_tokens), float(result.num_correct))
                for result in results]

    return score_rows


def _engine(model: nnx.Module, params: Params | None, engine: DecodingEngine | None,
            vocabulary) -> DecodingEngine:
    """``engine`` with ``params`` (its programs reused), or a new engine for the model."""
    params = pure_params(model, params)
    if engine is None:
        return DecodingEngine(model, params, vocabulary=vocabulary)
    return engine.with_params(params, vocabulary=vocabulary)

