"""BERT's next-sentence-prediction pairs, built from documents of sentences.

Every sentence that has a successor in its document starts one pair (A, B).
With probability 1/2, B is the true next sentence (label 0, "IsNext"); else B
is a sentence drawn uniformly from a *different* document (label 1,
"NotNext"), the label convention of Hugging Face's ``next_sentence_label``.

Documents are handled in windows of ``window_documents`` consecutive
documents and random B sentences are drawn from the other documents of the
same window: the stream never has to be held in memory, and every draw is a
stateless function of (seed, window index). A window with a single document
(only possible as the last window) has no other document, so its pairs are
all true continuations.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

from llmos_jax.data.pretraining import random_streams
from llmos_jax.errors import UserError

IS_NEXT, NOT_NEXT = 0, 1
_PAIR_STREAM = 2  # random_streams purpose number of the pairing draws


def tokenize_sentences(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary,
                       feature_key: str = "sentences") -> tf.data.Dataset:
    """Turns string sentences [n] into token ids (ragged int32 [n, None]) with `vocabulary`.

    Sentences are encoded one by one: some seqio vocabularies (bytes) cannot
    encode a batch of strings of different lengths at once.
    """
    def encode(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        sentences = tf.map_fn(
            lambda sentence: tf.cast(vocabulary.encode_tf(sentence), tf.int32),
            example[feature_key],
            fn_output_signature=tf.RaggedTensorSpec(shape=[None], dtype=tf.int32))
        return {**example, feature_key: sentences}

    return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)


def next_sentence_pairs(dataset: tf.data.Dataset, *, seed: int, window_documents: int = 64,
                        feature_key: str = "sentences") -> tf.data.Dataset:
    """Documents -> {"sentence_a", "sentence_b", "nsp_label"} pairs, in document order.

    Args:
      dataset: One document per example; `feature_key` holds its sentences as
        token ids, a ragged int [num_sentences, None] tensor (see
        :func:`tokenize_sentences`). Empty sentences are skipped.
      seed: The pairs are a pure function of the documents and this seed.
      window_documents: Documents per window (random B sentences come from
        the same window); at least 2.
      feature_key: The sentences feature; other features are dropped.
    """
    if window_documents < 2:
        raise UserError(f"next_sentence_pairs window_documents must be at least 2, got "
                        f"{window_documents}; random sentences come from other documents.")

    def non_empty_sentences(example: Mapping[str, tf.Tensor]) -> tf.RaggedTensor:
        sentences = example[feature_key]
        if not isinstance(sentences, tf.RaggedTensor):
            sentences = tf.RaggedTensor.from_tensor(sentences)
        return tf.ragged.boolean_mask(sentences, sentences.row_lengths() > 0)

    documents = dataset.map(non_empty_sentences).filter(lambda sentences: sentences.nrows() > 0)
    windows = documents.ragged_batch(window_documents)
    # map + unbatch rather than flat_map: flat_map over mixed ragged/dense slices trips
    # TF's type inference into logging a spurious error.
    return windows.enumerate().map(lambda index, window: _window_pairs(index, window, seed)).unbatch()


def _window_pairs(window_index: tf.Tensor, window: tf.RaggedTensor, seed: int) -> dict[str, tf.Tensor]:
    """All pairs of one window: window is ragged [documents, sentences, tokens]."""
    sentences = window.merge_dims(0, 1)  # [all sentences, tokens]
    document_of = window.value_rowids()  # document of each sentence
    first_sentence = window.row_starts()
    sentence_counts = window.row_lengths()
    num_documents = tf.cast(window.nrows(), tf.int32)

    has_next = tf.equal(document_of[:-1], document_of[1:])
    first = tf.cast(tf.where(has_next)[:, 0], tf.int64)
    num_pairs = tf.shape(first)[:1]
    stream = random_streams.derived_seed(seed, window_index, _PAIR_STREAM)
    fold_in = tf.random.experimental.stateless_fold_in

    def draw_seed(purpose: int) -> tf.Tensor:
        return fold_in(stream, purpose, alg=random_streams.ALGORITHM)

    use_random = tf.logical_and(random_streams.uniform(num_pairs, draw_seed(0)) < 0.5,
                                num_documents > 1)
    # Another document: shift by 1..num_documents-1 (mod num_documents).
    shift = random_streams.uniform_ints(num_pairs, draw_seed(1), 1, tf.maximum(num_documents, 2))
    other = (tf.gather(tf.cast(document_of, tf.int32), first) + shift) % num_documents
    other_counts = tf.gather(sentence_counts, other)
    pick = tf.cast(random_streams.uniform(num_pairs, draw_seed(2))
                   * tf.cast(other_counts, tf.float32), tf.int64)
    pick = tf.minimum(pick, other_counts - 1)  # guards float rounding up to the count
    random_sentence = tf.gather(first_sentence, other) + pick
    second = tf.where(use_random, random_sentence, first + 1)
    return {
        "sentence_a": tf.gather(sentences, first),
        "sentence_b": tf.gather(sentences, second),
        "nsp_label": tf.where(use_random, NOT_NEXT, IS_NEXT),
    }
