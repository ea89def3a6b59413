"""BERT pretraining examples (masked LM + next-sentence prediction) as a seqio preprocessor.

Each sentence pair becomes ``[CLS] A [SEP] B [SEP]``, padded to
``sequence_length["input_ids"]``, with these features (all of that length
except the label)::

    input_ids       int32   the masked sequence (see ``masked_lm``)
    token_type_ids  int32   0 over [CLS] A [SEP], 1 over B [SEP], 0 on padding
    mlm_targets     int32   original id at masked positions, 0 elsewhere
    mlm_weights     float32 1.0 at masked positions
    nsp_label       int32   scalar: 0 = B follows A, 1 = B is random

A pair longer than the window is cut at the end of the longer sentence,
one token at a time, as BERT's ``truncate_seq_pair`` does (BERT also cuts
randomly from the front; cutting only the end keeps outputs simple to check).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import tensorflow as tf

from llmos_jax.data.pretraining import masked_lm, random_streams
from llmos_jax.data.pretraining.next_sentence_pairs import next_sentence_pairs
from llmos_jax.errors import UserError

_MASK_STREAM = 3  # random_streams purpose number of the masking draws
LENGTH_KEY = "input_ids"


@dataclasses.dataclass(frozen=True)
class BertTokenIds:
    """The vocabulary facts BERT's objectives need.

    Attributes:
      vocab_size: Number of ids.
      pad_id: Padding; never masked.
      cls_id: Starts every sequence; never masked.
      sep_id: Ends each sentence; never masked.
      mask_id: Replaces 80% of the chosen tokens.
      random_token_range: [low, high) ids drawn for the 10% random
        replacement; ordinary tokens only, so specials never appear at random.
    """

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    random_token_range: tuple[int, int]

    def __post_init__(self) -> None:
        specials = {"pad_id": self.pad_id, "cls_id": self.cls_id, "sep_id": self.sep_id,
                    "mask_id": self.mask_id}
        for name, value in specials.items():
            if not 0 <= value < self.vocab_size:
                raise UserError(f"BertTokenIds.{name}={value} is outside the vocabulary "
                                f"[0, {self.vocab_size}); fix the id or vocab_size.")
        if len(set(specials.values())) != len(specials):
            raise UserError(f"BertTokenIds special ids must differ, got {specials}.")
        low, high = self.random_token_range
        if not 0 <= low < high <= self.vocab_size:
            raise UserError(f"BertTokenIds.random_token_range={self.random_token_range} must be a "
                            f"non-empty [low, high) inside [0, {self.vocab_size}).")


def bert_wordpiece_ids(vocab_size: int = 30522) -> BertTokenIds:
    """BERT's WordPiece vocabularies: [PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103.

    Ids below 999 are [PAD], [unused*], [UNK] and the specials, so random
    replacements are drawn from 999 up. 30522 is bert-base-uncased; pass
    28996 for bert-base-cased.
    """
    return BertTokenIds(vocab_size=vocab_size, pad_id=0, cls_id=101, sep_id=102, mask_id=103,
                        random_token_range=(999, vocab_size))


def byte_vocab_ids() -> BertTokenIds:
    """A byte vocabulary with BERT specials: ``seqio.ByteVocabulary(extra_ids=3)``.

    seqio's byte ids are 0 pad, 1 EOS, 2 UNK and 3..258 for the bytes; bytes
    have no room for specials, so [CLS], [SEP] and [MASK] take the three extra
    ids 259, 260, 261 (vocab_size 262). Random replacements are bytes.
    """
    return BertTokenIds(vocab_size=262, pad_id=0, cls_id=259, sep_id=260, mask_id=261,
                        random_token_range=(3, 259))


def truncated_lengths(length_a: tf.Tensor, length_b: tf.Tensor,
                      budget: tf.Tensor | int) -> tuple[tf.Tensor, tf.Tensor]:
    """Lengths after trimming the longer sentence a token at a time until both fit `budget`.

    Ties trim B, so once both are cut A keeps ``ceil(budget / 2)``.
    """
    shorter = tf.minimum(length_a, length_b)
    fits = length_a + length_b <= budget
    only_longer_cut = 2 * shorter <= budget
    half_a, half_b = budget - budget // 2, budget // 2
    new_a = tf.where(fits | (length_a <= length_b) & only_longer_cut, length_a,
                     tf.where(only_longer_cut, budget - length_b, half_a))
    new_b = tf.where(fits | (length_b < length_a) & only_longer_cut, length_b,
                     tf.where(only_longer_cut, budget - length_a, half_b))
    return new_a, new_b


def bert_pretraining(dataset: tf.data.Dataset, sequence_length: Mapping[str, int], *,
                     token_ids: BertTokenIds, seed: int, mask_rate: float = 0.15,
                     max_predictions: int | None = None, window_documents: int = 64,
                     feature_key: str = "sentences") -> tf.data.Dataset:
    """seqio preprocessor: documents of tokenized sentences -> BERT MLM + NSP examples.

    Args:
      dataset: One document per example, `feature_key` = ragged int
        [num_sentences, None] token ids (see
        ``next_sentence_pairs.tokenize_sentences``).
      sequence_length: Needs ``"input_ids"``, the padded example length.
      token_ids: Special ids and vocabulary size, e.g.
        :func:`bert_wordpiece_ids` or :func:`byte_vocab_ids`.
      seed: Pairing and masking are pure functions of the documents and it;
        example ``i`` is masked with seeds derived from ``(seed, i)``.
      mask_rate: Fraction of maskable tokens chosen for prediction.
      max_predictions: Cap on chosen tokens per example (BERT: 20 at 128).
      window_documents: See ``next_sentence_pairs``.
      feature_key: The sentences feature.
    """
    masked_lm.check_mask_rate(mask_rate)
    if LENGTH_KEY not in sequence_length:
        raise UserError(f"bert_pretraining needs sequence_length[{LENGTH_KEY!r}], the padded "
                        "example length; add it to the task's sequence_length.")
    length = int(sequence_length[LENGTH_KEY])
    if length < 5:
        raise UserError(f"sequence_length[{LENGTH_KEY!r}]={length} is too short: [CLS] A [SEP] B "
                        "[SEP] needs at least 5; raise it.")
    pairs = next_sentence_pairs(dataset, seed=seed, window_documents=window_documents,
                                feature_key=feature_key)

    def to_example(index: tf.Tensor, pair: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        input_ids, token_type_ids = _assemble_pair(pair["sentence_a"], pair["sentence_b"],
                                                   token_ids, length)
        maskable = ((input_ids != token_ids.cls_id) & (input_ids != token_ids.sep_id)
                    & (input_ids != token_ids.pad_id))
        masked = masked_lm.mask_tokens(
            input_ids, maskable, random_streams.derived_seed(seed, index, _MASK_STREAM),
            mask_id=token_ids.mask_id, random_token_range=token_ids.random_token_range,
            mask_rate=mask_rate, max_predictions=max_predictions)
        return {
            "input_ids": masked.inputs,
            "token_type_ids": token_type_ids,
            "mlm_targets": masked.targets,
            "mlm_weights": masked.weights,
            "nsp_label": tf.cast(pair["nsp_label"], tf.int32),
        }

    return pairs.enumerate().map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


def _assemble_pair(sentence_a: tf.Tensor, sentence_b: tf.Tensor, token_ids: BertTokenIds,
                   length: int) -> tuple[tf.Tensor, tf.Tensor]:
    """([CLS] A [SEP] B [SEP] + padding, token types), both int32 [length]."""
    sentence_a = tf.cast(sentence_a, tf.int32)
    sentence_b = tf.cast(sentence_b, tf.int32)
    keep_a, keep_b = truncated_lengths(tf.size(sentence_a), tf.size(sentence_b), length - 3)
    cls, sep = tf.constant([token_ids.cls_id]), tf.constant([token_ids.sep_id])
    ids = tf.concat([cls, sentence_a[:keep_a], sep, sentence_b[:keep_b], sep], axis=0)
    types = tf.concat([tf.zeros([keep_a + 2], tf.int32), tf.ones([keep_b + 1], tf.int32)], axis=0)
    padding = [[0, length - tf.size(ids)]]
    ids = tf.pad(ids, padding, constant_values=token_ids.pad_id)
    types = tf.pad(types, padding)
    return tf.ensure_shape(ids, [length]), tf.ensure_shape(types, [length])
