"""T5's span-corruption objective as a seqio preprocessor.

About ``noise_density`` (15%) of each example's tokens, in spans of mean
length ``mean_noise_span_length`` (3), are dropped from the inputs; each span
is replaced by one sentinel id, and the targets list every sentinel followed
by the tokens it stands for::

    tokens   a b c d e f g h i j
    noise    . . x x . . . . x .      (2 spans)
    inputs   a b <s0> e f g h <s1> j
    targets  <s0> c d <s1> i

Span layout follows the published algorithm (Raffel et al. 2020, T5's
``random_spans_noise_mask``): the number of noise tokens is
``round(length * noise_density)`` (at least 1, at most length - 1), the number
of spans is ``round(noise_tokens / mean_noise_span_length)``; noise tokens and
kept tokens are each split into that many non-empty runs uniformly at random,
and runs alternate, kept first. This is an independent implementation (seqio
0.0.20 does not ship span corruption) driven by stateless seeds, so its draws
differ from T5's but are exact for a fixed seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import tensorflow as tf

from llmos_jax.data.preprocessors import chunk_tokens
from llmos_jax.data.pretraining import random_streams
from llmos_jax.errors import UserError

_SPAN_STREAM = 1  # random_streams purpose number of the span layout


@dataclasses.dataclass(frozen=True)
class SentinelIds:
    """The ids that replace noise spans: span ``i`` becomes ``first_id - i``.

    T5 reserves the vocabulary's top ``count`` ids as sentinels (``<extra_id_0>``
    is ``vocab_size - 1`` and they count down); a seqio vocabulary built with
    ``extra_ids=count`` puts them in the same place. Use
    :meth:`top_of_vocabulary` for that layout, or name another block.

    Attributes:
      first_id: The sentinel of the first span.
      count: How many sentinels exist; an example may not have more spans.
    """

    first_id: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UserError(f"SentinelIds.count must be at least 1, got {self.count}.")
        if self.first_id - self.count + 1 < 0:
            raise UserError(
                f"SentinelIds(first_id={self.first_id}, count={self.count}) counts down past id 0; "
                "lower count or raise first_id."
            )

    @classmethod
    def top_of_vocabulary(cls, vocab_size: int, count: int = 100) -> SentinelIds:
        """T5's layout: the last `count` ids of a `vocab_size` vocabulary, from the top."""
        return cls(first_id=vocab_size - 1, count=count)


@dataclasses.dataclass(frozen=True)
class CorruptedLengths:
    """Lengths for span corruption of `raw_tokens` tokens (EOS not counted).

    Attributes:
      raw_tokens: Tokens of uncorrupted text per example.
      inputs: Corrupted input length (kept tokens + one sentinel per span).
      targets: Target length (noise tokens + one sentinel per span).
      noise_spans: Spans, i.e. sentinels used.
    """

    raw_tokens: int
    inputs: int
    targets: int
    noise_spans: int


def corrupted_lengths(raw_tokens: int, noise_density: float = 0.15,
                      mean_noise_span_length: float = 3.0) -> CorruptedLengths:
    """The exact input and target lengths that corrupting `raw_tokens` tokens gives."""
    _check_rates(noise_density, mean_noise_span_length)
    work = max(raw_tokens, 2)
    noise = min(max(round(work * noise_density), 1), work - 1)
    spans = min(max(round(noise / mean_noise_span_length), 1), noise, work - noise)
    return CorruptedLengths(raw_tokens=raw_tokens, inputs=work - noise + spans,
                            targets=noise + spans, noise_spans=spans)


def lengths_for_inputs(inputs_length: int, noise_density: float = 0.15,
                       mean_noise_span_length: float = 3.0) -> CorruptedLengths:
    """The longest raw example whose corrupted inputs plus one EOS fit `inputs_length`.

    Use its ``targets + 1`` as ``sequence_length["targets"]`` so that seqio
    never trims a target.
    """
    if inputs_length < 3:
        raise UserError(f"sequence_length['inputs']={inputs_length} is too short for span "
                        "corruption (one kept token, one sentinel and EOS need 3); raise it.")
    raw = 2
    while corrupted_lengths(raw + 1, noise_density, mean_noise_span_length).inputs + 1 <= inputs_length:
        raw += 1
    return corrupted_lengths(raw, noise_density, mean_noise_span_length)


def random_spans_noise_mask(length: tf.Tensor | int, seed: tf.Tensor, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tf.Tensor:
    """bool [length]: True at noise tokens; spans alternate kept/noise, kept first.

    Args:
      length: Tokens in the example (scalar).
      seed: Stateless seed, shape [2].
      noise_density: Fraction of tokens to corrupt.
      mean_noise_span_length: Average noise span length.
    """
    _check_rates(noise_density, mean_noise_span_length)
    length = tf.cast(length, tf.int32)
    work = tf.maximum(length, 2)  # one kept and one noise token at least
    noise = tf.cast(tf.round(tf.cast(work, tf.float64) * noise_density), tf.int32)
    noise = tf.clip_by_value(noise, 1, work - 1)
    spans = tf.cast(tf.round(tf.cast(noise, tf.float64) / mean_noise_span_length), tf.int32)
    spans = tf.clip_by_value(spans, 1, tf.minimum(noise, work - noise))
    fold_in = tf.random.experimental.stateless_fold_in
    noise_runs = _random_run_lengths(noise, spans, fold_in(seed, 0, alg=random_streams.ALGORITHM))
    kept_runs = _random_run_lengths(work - noise, spans,
                                    fold_in(seed, 1, alg=random_streams.ALGORITHM))
    run_lengths = tf.reshape(tf.stack([kept_runs, noise_runs], axis=1), [-1])
    run_numbers = tf.repeat(tf.range(2 * spans), run_lengths)
    return tf.equal(run_numbers % 2, 1)[:length]


def corrupt_spans(tokens: tf.Tensor, noise_mask: tf.Tensor,
                  sentinels: SentinelIds) -> tuple[tf.Tensor, tf.Tensor]:
    """(inputs, targets): each noise span -> its sentinel; targets = sentinel + span, per span."""
    previous = tf.concat([[False], noise_mask[:-1]], axis=0)
    span_starts = tf.logical_and(noise_mask, tf.logical_not(previous))
    span_index = tf.cumsum(tf.cast(span_starts, tokens.dtype)) - 1
    sentinel = tf.cast(sentinels.first_id, tokens.dtype) - span_index
    inputs = tf.boolean_mask(tf.where(span_starts, sentinel, tokens),
                             tf.logical_or(tf.logical_not(noise_mask), span_starts))
    interleaved = tf.stack([tf.where(span_starts, sentinel, -1), tokens], axis=1)
    keep = tf.stack([span_starts, noise_mask], axis=1)
    targets = tf.boolean_mask(tf.reshape(interleaved, [-1]), tf.reshape(keep, [-1]))
    return inputs, targets


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None = None, *,
                    seed: int, sentinels: SentinelIds, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0,
                    feature_key: str = "targets") -> tf.data.Dataset:
    """seqio preprocessor: token examples -> {"inputs", "targets"} span corruption.

    With `sequence_length` (seqio passes it), examples are first cut into
    chunks of :func:`lengths_for_inputs` ``(sequence_length["inputs"])``
    tokens, so the corrupted inputs plus an EOS always fit and seqio trims
    nothing; append EOS after this step. Without it, whole examples are
    corrupted. Empty examples are dropped.

    Args:
      dataset: Examples with a rank-1 integer `feature_key`.
      sequence_length: Feature name to length; needs "inputs".
      seed: Example ``i`` (in output order, after chunking) is corrupted with
        seeds derived from ``(seed, i)`` only.
      sentinels: Where sentinel ids live, e.g.
        ``SentinelIds.top_of_vocabulary(vocab_size)``.
      noise_density: Fraction of tokens to corrupt.
      mean_noise_span_length: Average noise span length.
      feature_key: The token feature to corrupt; other features are dropped.
    """
    _check_rates(noise_density, mean_noise_span_length)
    if sequence_length is not None:
        if "inputs" not in sequence_length:
            raise UserError("span_corruption needs sequence_length['inputs']; add an 'inputs' "
                            "length to the task's sequence_length.")
        lengths = lengths_for_inputs(int(sequence_length["inputs"]), noise_density,
                                     mean_noise_span_length)
        if lengths.noise_spans > sentinels.count:
            raise UserError(
                f"span corruption of sequence_length['inputs']={sequence_length['inputs']} makes "
                f"{lengths.noise_spans} noise spans but SentinelIds.count={sentinels.count}; "
                "use more sentinels (extra_ids) or shorter inputs."
            )
        dataset = chunk_tokens(dataset, {feature_key: lengths.raw_tokens}, feature_key=feature_key)
    dataset = dataset.filter(lambda example: tf.size(example[feature_key]) > 0)

    def corrupt(index: tf.Tensor, example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        tokens = example[feature_key]
        seed_for_example = random_streams.derived_seed(seed, index, _SPAN_STREAM)
        noise_mask = random_spans_noise_mask(tf.size(tokens), seed_for_example, noise_density,
                                             mean_noise_span_length)
        inputs, targets = corrupt_spans(tokens, noise_mask, sentinels)
        spans = tf.size(inputs) - tf.reduce_sum(tf.cast(tf.logical_not(noise_mask), tf.int32))
        with tf.control_dependencies([tf.debugging.assert_less_equal(
                spans, sentinels.count,
                message=f"an example has more noise spans than SentinelIds.count={sentinels.count}; "
                        "pass sequence_length or use more sentinels")]):
            return {"inputs": tf.identity(inputs), "targets": tf.identity(targets)}

    return dataset.enumerate().map(corrupt, num_parallel_calls=tf.data.AUTOTUNE)


def _random_run_lengths(num_items: tf.Tensor, num_runs: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """int32 [num_runs]: a uniformly random split of num_items into non-empty runs."""
    rank = random_streams.rank_of_random_keys([num_items - 1], seed,
                                              tf.ones([num_items - 1], dtype=tf.bool))
    starts_new_run = tf.cast(rank < num_runs - 1, tf.int32)
    run_ids = tf.concat([[0], tf.cumsum(starts_new_run)], axis=0)
    return tf.math.unsorted_segment_sum(tf.ones_like(run_ids), run_ids, num_runs)


def _check_rates(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise UserError(f"span corruption noise_density must be in (0, 1), got {noise_density}.")
    if mean_noise_span_length < 1.0:
        raise UserError("span corruption mean_noise_span_length must be at least 1, "
                        f"got {mean_noise_span_length}.")
