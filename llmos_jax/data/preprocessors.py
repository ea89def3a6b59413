"""seqio preprocessors for language-model pre-training text.

seqio trims every feature to ``sequence_length`` after preprocessing, which
would silently drop everything past the first window of a long document (a
whole source file, a book). Splitting documents into window-sized chunks first
keeps every token.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf


def chunk_tokens(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    feature_key: str = "targets",
) -> tf.data.Dataset:
    """Splits each tokenized example into consecutive chunks that fit the window.

    Chunks are ``sequence_length[feature_key]`` tokens long except the last
    one of each document, which holds the remainder; concatenating an
    example's chunks gives back its tokens exactly. Run it after EOS is
    appended so that only a document's true end carries EOS. Other features
    are dropped: a per-document value (e.g. the raw text) would be wrong for a
    chunk.

    seqio passes ``sequence_length`` automatically to preprocessors that take
    it.

    Args:
      dataset: examples with a rank-1 integer ``feature_key``.
      sequence_length: feature name to window length, as seqio provides it.
      feature_key: the feature to chunk.

    Returns:
      A dataset of ``{feature_key: chunk}`` examples, in document order.
    """
    chunk_length = int(sequence_length[feature_key])
    if chunk_length <= 0:
        raise ValueError(f"sequence_length[{feature_key!r}] must be positive, got {chunk_length}.")

    def to_chunks(example: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
        tokens = example[feature_key]
        starts = tf.range(0, tf.size(tokens), chunk_length)
        chunks = tf.RaggedTensor.from_row_starts(tokens, starts)
        return tf.data.Dataset.from_tensor_slices(chunks).map(
            lambda chunk: {feature_key: chunk}
        )

    return dataset.flat_map(to_chunks)
