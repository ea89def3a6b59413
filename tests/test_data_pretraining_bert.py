"""BERT MLM + NSP examples: pinned outputs, 15% / 80-10-10 / 50% statistics, layout, seqio use."""

import functools
import itertools
import uuid

import numpy as np
import pytest
import seqio
import tensorflow as tf

from llmos_jax.data.pretraining import bert_pretraining as bert
from llmos_jax.data.pretraining.next_sentence_pairs import (IS_NEXT, NOT_NEXT, next_sentence_pairs,
                                                            tokenize_sentences)
from llmos_jax.errors import UserError

SMALL_IDS = bert.BertTokenIds(vocab_size=50, pad_id=0, cls_id=1, sep_id=2, mask_id=3,
                              random_token_range=(4, 50))


def documents_dataset(documents: list[list[list[int]]]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {"sentences": tf.ragged.constant(documents, dtype=tf.int32)})


def examples(documents, length, *, token_ids=SMALL_IDS, seed=0, **kwargs) -> list[dict]:
    dataset = bert.bert_pretraining(documents_dataset(documents), {"input_ids": length},
                                    token_ids=token_ids, seed=seed, **kwargs)
    return [{key: value.tolist() for key, value in ex.items()} for ex in dataset.as_numpy_iterator()]


def test_fixed_seed_gives_pinned_examples():
    documents = [[[10, 11, 12], [13, 14], [15, 16, 17, 18]], [[20, 21], [22, 23, 24]],
                 [[30], [31, 32], [33]]]

    assert examples(documents, 10, window_documents=4) == [
        {"input_ids": [1, 10, 11, 12, 2, 3, 14, 2, 0, 0],
         "token_type_ids": [0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
         "mlm_targets": [0, 0, 0, 0, 0, 13, 0, 0, 0, 0],
         "mlm_weights": [0, 0, 0, 0, 0, 1, 0, 0, 0, 0], "nsp_label": 0},
        {"input_ids": [1, 13, 14, 2, 3, 16, 17, 18, 2, 0],
         "token_type_ids": [0, 0, 0, 0, 1, 1, 1, 1, 1, 0],
         "mlm_targets": [0, 0, 0, 0, 15, 0, 0, 0, 0, 0],
         "mlm_weights": [0, 0, 0, 0, 1, 0, 0, 0, 0, 0], "nsp_label": 0},
        {"input_ids": [1, 20, 21, 2, 35, 2, 0, 0, 0, 0],  # B = [33], from document 3; 33 -> 35
         "token_type_ids": [0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
         "mlm_targets": [0, 0, 0, 0, 33, 0, 0, 0, 0, 0],
         "mlm_weights": [0, 0, 0, 0, 1, 0, 0, 0, 0, 0], "nsp_label": 1},
        {"input_ids": [1, 30, 2, 3, 14, 2, 0, 0, 0, 0],  # B = [13, 14], from document 1
         "token_type_ids": [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
         "mlm_targets": [0, 0, 0, 13, 0, 0, 0, 0, 0, 0],
         "mlm_weights": [0, 0, 0, 1, 0, 0, 0, 0, 0, 0], "nsp_label": 1},
        {"input_ids": [1, 31, 3, 2, 22, 23, 24, 2, 0, 0],  # B = [22, 23, 24], from document 2
         "token_type_ids": [0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
         "mlm_targets": [0, 0, 32, 0, 0, 0, 0, 0, 0, 0],
         "mlm_weights": [0, 0, 1, 0, 0, 0, 0, 0, 0, 0], "nsp_label": 1},
    ]


def test_same_seed_same_examples_different_seed_different():
    documents = [[[10 + i, 11, 12, 13], [20 + i, 21, 22], [30 + i, 31]] for i in range(6)]
    assert examples(documents, 16, seed=4) == examples(documents, 16, seed=4)
    assert examples(documents, 16, seed=4) != examples(documents, 16, seed=5)


def truncate_by_loop(length_a: int, length_b: int, budget: int) -> tuple[int, int]:
    """BERT's truncate_seq_pair: trim the longer (B on ties) one token at a time."""
    while length_a + length_b > budget:
        if length_a > length_b:
            length_a -= 1
        else:
            length_b -= 1
    return length_a, length_b


def test_truncated_lengths_equal_bert_trimming_loop():
    grid = list(itertools.product(range(13), range(13), range(13)))
    a, b, budget = (tf.constant(column) for column in zip(*grid))
    new_a, new_b = bert.truncated_lengths(a, b, budget)

    assert list(zip(new_a.numpy().tolist(), new_b.numpy().tolist())) == [
        truncate_by_loop(*case) for case in grid]


def test_long_pairs_are_truncated_to_the_window():
    (example,) = examples([[list(range(10, 22)), list(range(30, 34))]], 12, mask_rate=0.01,
                          window_documents=2)
    original = np.where(np.array(example["mlm_weights"]) > 0, example["mlm_targets"],
                        example["input_ids"]).tolist()
    # budget 9: B (4 tokens) fits beside 5 tokens of A.
    assert original == [1, 10, 11, 12, 13, 14, 2, 30, 31, 32, 33, 2]
    assert example["token_type_ids"] == [0] * 7 + [1] * 5


@pytest.fixture(scope="module")
def corpus():
    """400 documents of 3-8 sentences, each sentence a unique run of 3-20 ids in [10, 1000)."""
    rng = np.random.default_rng(0)
    documents = [[rng.integers(10, 1000, size=rng.integers(3, 21)).tolist()
                  for _ in range(rng.integers(3, 9))] for _ in range(400)]
    sentences = [tuple(s) for document in documents for s in document]
    assert len(set(sentences)) == len(sentences)
    return documents


@pytest.fixture(scope="module")
def corpus_examples(corpus):
    ids = bert.BertTokenIds(vocab_size=1000, pad_id=0, cls_id=1, sep_id=2, mask_id=3,
                            random_token_range=(10, 1000))
    return ids, examples(corpus, 48, token_ids=ids, seed=11, window_documents=16)


def test_pairs_are_true_continuations_or_sentences_of_other_documents(corpus, corpus_examples):
    _, outputs = corpus_examples
    where = {tuple(s): (d, i) for d, document in enumerate(corpus) for i, s in enumerate(document)}
    labels = []
    for example in outputs:
        original = np.where(np.array(example["mlm_weights"]) > 0, example["mlm_targets"],
                            example["input_ids"]).tolist()
        body = original[1:original.index(0) - 1 if 0 in original else None]
        sep = body.index(2)
        (doc_a, index_a), (doc_b, index_b) = where[tuple(body[:sep])], where[tuple(body[sep + 1:])]
        if example["nsp_label"] == IS_NEXT:
            assert (doc_b, index_b) == (doc_a, index_a + 1)
        else:
            assert example["nsp_label"] == NOT_NEXT and doc_b != doc_a
        labels.append(example["nsp_label"])

    assert len(outputs) == sum(len(document) - 1 for document in corpus)
    assert abs(np.mean(labels) - 0.5) < 0.04


def test_masking_picks_15_percent_of_ordinary_tokens_then_80_10_10(corpus_examples):
    ids, outputs = corpus_examples
    chosen = kept = masked = randomised = 0
    for example in outputs:
        inputs, targets = np.array(example["input_ids"]), np.array(example["mlm_targets"])
        weights, types = np.array(example["mlm_weights"]), np.array(example["token_type_ids"])
        original = np.where(weights > 0, targets, inputs)
        special = np.isin(original, [ids.cls_id, ids.sep_id, ids.pad_id])
        # Exactly round(15%) of the ordinary tokens, never a special token or padding.
        assert weights.sum() == max(1, round(0.15 * (~special).sum()))
        assert not weights[special].any()
        assert (targets[weights == 0] == 0).all()
        # Layout: [CLS] A [SEP] B [SEP] then padding with token type 0.
        assert original[0] == ids.cls_id and (original == ids.sep_id).sum() == 2
        second_sep = np.flatnonzero(original == ids.sep_id)[1]
        assert (types[second_sep + 1:] == 0).all() and types[second_sep] == 1
        picked = weights > 0
        chosen += picked.sum()
        masked += (inputs[picked] == ids.mask_id).sum()
        kept += (inputs[picked] == targets[picked]).sum()
        replaced = picked & (inputs != ids.mask_id) & (inputs != targets)
        randomised += replaced.sum()
        assert ((inputs[replaced] >= 10) & (inputs[replaced] < 1000)).all()

    assert chosen > 5000
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(kept / chosen - 0.1) < 0.015
    assert abs(randomised / chosen - 0.1) < 0.015


def test_byte_vocabulary_task_end_to_end():
    vocabulary = seqio.ByteVocabulary(extra_ids=3)
    ids = bert.byte_vocab_ids()
    assert vocabulary.vocab_size == ids.vocab_size
    documents = [["Hello there.", "General Kenobi!"], ["One.", "Two.", "Three."], ["Alone."]]
    name = f"bert_bytes_{uuid.uuid4().hex[:8]}"
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                {"sentences": tf.ragged.constant(documents)}), splits=["train"]),
        preprocessors=[
            functools.partial(tokenize_sentences, vocabulary=vocabulary),
            functools.partial(bert.bert_pretraining, token_ids=ids, seed=0),
        ],
        output_features={"input_ids": seqio.Feature(vocabulary, add_eos=False)})
    try:
        outputs = list(seqio.get_mixture_or_task(name).get_dataset(
            {"input_ids": 40}, split="train", shuffle=False).as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove(name)

    assert len(outputs) == 3
    assert {key for key in outputs[0]} == {"input_ids", "token_type_ids", "mlm_targets",
                                           "mlm_weights", "nsp_label"}
    for example in outputs:
        original = np.where(example["mlm_weights"] > 0, example["mlm_targets"],
                            example["input_ids"])
        text = original[original < 259]
        assert vocabulary.decode(text[text > 0].tolist()) in {
            a + b for document in documents for a in document
            for other in documents for b in other}


def test_bad_settings_raise_user_errors():
    with pytest.raises(UserError, match=r"BertTokenIds.mask_id=60 is outside the vocabulary"):
        bert.BertTokenIds(vocab_size=50, pad_id=0, cls_id=1, sep_id=2, mask_id=60,
                          random_token_range=(4, 50))
    with pytest.raises(UserError, match="special ids must differ"):
        bert.BertTokenIds(vocab_size=50, pad_id=0, cls_id=1, sep_id=1, mask_id=3,
                          random_token_range=(4, 50))
    with pytest.raises(UserError, match=r"needs sequence_length\['input_ids'\]"):
        bert.bert_pretraining(documents_dataset([[[10], [11]]]), {"targets": 8},
                              token_ids=SMALL_IDS, seed=0)
    with pytest.raises(UserError, match="too short"):
        examples([[[10], [11]]], 4)
    with pytest.raises(UserError, match="window_documents must be at least 2"):
        next_sentence_pairs(documents_dataset([[[10], [11]]]), seed=0, window_documents=1)
    with pytest.raises(UserError, match="mask_rate must be in"):
        examples([[[10], [11]]], 8, mask_rate=0.0)
