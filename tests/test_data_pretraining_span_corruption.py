"""T5 span corruption: pinned outputs, span statistics, token preservation, seqio use."""

import functools
import uuid

import numpy as np
import pytest
import seqio
import tensorflow as tf

from llmos_jax.data.pretraining import span_corruption
from llmos_jax.data.pretraining.span_corruption import (SentinelIds, corrupted_lengths,
                                                        lengths_for_inputs,
                                                        random_spans_noise_mask)
from llmos_jax.errors import UserError


def token_dataset(examples: list[list[int]]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {"targets": tf.ragged.constant(examples, dtype=tf.int32)})


def corrupt(examples, **kwargs) -> list[tuple[list[int], list[int]]]:
    kwargs.setdefault("sentinels", SentinelIds(first_id=999, count=5))
    dataset = span_corruption.span_corruption(token_dataset(examples), **kwargs)
    return [(ex["inputs"].tolist(), ex["targets"].tolist()) for ex in dataset.as_numpy_iterator()]


def uncorrupt(inputs: list[int], targets: list[int], sentinels: SentinelIds) -> list[int]:
    """The original tokens: each sentinel in the inputs replaced by its target span."""
    sentinel_ids = set(range(sentinels.first_id - sentinels.count + 1, sentinels.first_id + 1))
    spans, current = {}, None
    for token in targets:
        if token in sentinel_ids:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    original = []
    for token in inputs:
        original.extend(spans.pop(token) if token in sentinel_ids else [token])
    assert not spans, "every target span has a sentinel in the inputs"
    return original


def test_fixed_seed_gives_pinned_inputs_and_targets():
    outputs = corrupt([list(range(100, 160)), list(range(200, 220))], seed=7)

    assert outputs == [
        (list(range(100, 117)) + [999] + list(range(120, 138)) + [998] + list(range(143, 159)) + [997],
         [999, 117, 118, 119, 998, 138, 139, 140, 141, 142, 997, 159]),
        (list(range(200, 217)) + [999], [999, 217, 218, 219]),
    ]


def test_noise_mask_is_a_pure_function_of_the_seed():
    first = random_spans_noise_mask(40, tf.constant([1, 2], tf.int64)).numpy()
    again = random_spans_noise_mask(40, tf.constant([1, 2], tf.int64)).numpy()
    other = random_spans_noise_mask(40, tf.constant([1, 3], tf.int64)).numpy()

    np.testing.assert_array_equal(first, again)
    assert first.tolist() == [False] * 25 + [True] * 2 + [False] * 9 + [True] * 4
    assert not np.array_equal(first, other)


def test_same_seed_same_corruption_different_seed_different():
    examples = [list(range(10, 70)), list(range(70, 130))]
    assert corrupt(examples, seed=1) == corrupt(examples, seed=1)
    assert corrupt(examples, seed=1) != corrupt(examples, seed=2)


def runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """(is_noise, length) of each maximal run."""
    edges = np.flatnonzero(np.diff(mask.astype(int))) + 1
    return [(bool(run[0]), len(run)) for run in np.split(mask, edges)]


def test_noise_density_and_span_lengths_over_many_examples():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 400, size=300)
    noise_total = token_total = span_total = 0
    span_lengths = []
    for index, length in enumerate(lengths):
        mask = random_spans_noise_mask(int(length), tf.constant([5, index], tf.int64)).numpy()
        expected = corrupted_lengths(int(length))
        noise_runs = [size for is_noise, size in runs(mask) if is_noise]
        # Exact counts per example; runs alternate, starting with kept tokens.
        assert mask.sum() == expected.targets - expected.noise_spans
        assert len(noise_runs) == expected.noise_spans
        assert [is_noise for is_noise, _ in runs(mask)] == [False, True] * expected.noise_spans
        noise_total += mask.sum()
        token_total += length
        span_total += len(noise_runs)
        span_lengths += noise_runs

    assert abs(noise_total / token_total - 0.15) < 0.002
    assert abs(noise_total / span_total - 3.0) < 0.05
    # Span lengths are random, not all 3: roughly geometric-like spread.
    assert min(span_lengths) == 1 and max(span_lengths) >= 9
    assert 1.0 < np.std(span_lengths) < 3.5


def test_every_token_survives_in_order():
    rng = np.random.default_rng(1)
    examples = [rng.integers(3, 900, size=rng.integers(1, 120)).tolist() for _ in range(100)]
    sentinels = SentinelIds(first_id=999, count=50)
    outputs = corrupt(examples, seed=3, sentinels=sentinels)

    assert len(outputs) == len(examples)
    for example, (inputs, targets) in zip(examples, outputs):
        kept = iter(example)
        assert all(token in kept for token in inputs if token < 950)  # an in-order subsequence
        assert uncorrupt(inputs, targets, sentinels) == example
        assert (len(inputs), len(targets)) == (corrupted_lengths(len(example)).inputs,
                                               corrupted_lengths(len(example)).targets)


def test_sentinels_count_down_from_the_top_of_the_vocabulary():
    sentinels = SentinelIds.top_of_vocabulary(1100, count=100)
    assert (sentinels.first_id, sentinels.count) == (1099, 100)

    (inputs, targets), = corrupt([list(range(10, 70))], seed=7, sentinels=sentinels)
    assert [token for token in inputs if token >= 1000] == [1099, 1098, 1097]
    assert [token for token in targets if token >= 1000] == [1099, 1098, 1097]


def test_lengths_for_inputs_reproduces_t5s_published_lengths():
    # T5: 512 inputs (with EOS) come from 568 raw tokens and need 114 targets (with EOS).
    assert lengths_for_inputs(512) == span_corruption.CorruptedLengths(
        raw_tokens=568, inputs=511, targets=113, noise_spans=28)
    # 34 tokens: 5 noise in 2 spans -> 29 kept + 2 sentinels + EOS = 32; 35 would give 33.
    assert lengths_for_inputs(32) == span_corruption.CorruptedLengths(
        raw_tokens=34, inputs=31, targets=7, noise_spans=2)


def test_long_documents_are_chunked_so_seqio_trims_nothing():
    name = f"span_corruption_{uuid.uuid4().hex[:8]}"
    documents = ["The quick brown fox jumps over the lazy dog. " * 5, "short", "Pack my box " * 9]
    vocabulary = seqio.ByteVocabulary(extra_ids=100)
    sentinels = SentinelIds.top_of_vocabulary(vocabulary.vocab_size, count=100)
    lengths = lengths_for_inputs(32)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                {"text": documents}), splits=["train"]),
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            functools.partial(span_corruption.span_corruption, seed=0, sentinels=sentinels),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={key: seqio.Feature(vocabulary, add_eos=True)
                         for key in ("inputs", "targets")})
    try:
        examples = list(seqio.get_mixture_or_task(name).get_dataset(
            {"inputs": 32, "targets": lengths.targets + 1}, split="train",
            shuffle=False).as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove(name)

    chunks = [uncorrupt(ex["inputs"][:-1].tolist(), ex["targets"][:-1].tolist(), sentinels)
              for ex in examples]
    assert all(ex["inputs"][-1] == 1 and ex["targets"][-1] == 1 for ex in examples)  # EOS kept
    assert all(len(chunk) <= lengths.raw_tokens for chunk in chunks)
    assert vocabulary.decode(sum(chunks, [])) == "".join(documents)


def test_bad_settings_raise_user_errors():
    sentinels = SentinelIds(first_id=999, count=5)
    with pytest.raises(UserError, match="makes 28 noise spans but SentinelIds.count=5"):
        span_corruption.span_corruption(token_dataset([[1]]), {"inputs": 512}, seed=0,
                                        sentinels=sentinels)
    with pytest.raises(UserError, match=r"needs sequence_length\['inputs'\]"):
        span_corruption.span_corruption(token_dataset([[1]]), {"targets": 8}, seed=0,
                                        sentinels=sentinels)
    with pytest.raises(UserError, match="noise_density must be in"):
        corrupted_lengths(10, noise_density=1.5)
    with pytest.raises(UserError, match="counts down past id 0"):
        SentinelIds(first_id=3, count=5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more noise spans than"):
        corrupt([list(range(200))], seed=0, sentinels=SentinelIds(first_id=999, count=2))
