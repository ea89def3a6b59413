"""Byte-level seqio Tasks: registration, splits, byte round trips and chunking."""

import uuid

import numpy as np
import pytest
import seqio
import tensorflow as tf

from llmos_jax.data import text_tasks
from llmos_jax.data.preprocessors import chunk_tokens
from llmos_jax.errors import UserError

EOS = 1
BYTE_OFFSET = 3  # ByteVocabulary id = byte + 3.


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _task_targets(name: str, split: str, length: int) -> list[list[int]]:
    """The ``targets`` of every Task example, after all preprocessing and trimming."""
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length={"targets": length}, split=split, shuffle=False
    )
    return [example["targets"].tolist() for example in dataset.as_numpy_iterator()]


def _bytes_ids(text: str) -> list[int]:
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]


def test_split_text_cuts_at_a_line_start():
    text = "aaaa\nbbbb\ncccc\ndddd\n"  # 20 characters.

    expected = {"train": "aaaa\nbbbb\ncccc\n", "validation": "dddd\n"}
    assert text_tasks.split_text(text, 0.25) == expected
    # 40% from the end is character 12, inside "cccc": the cut moves to the next line, 15.
    assert text_tasks.split_text(text, 0.4) == expected
    assert text_tasks.split_text(text, 0.0) == {"train": text, "validation": ""}
    assert text_tasks.split_text("no newline", 0.5) == {"train": "no ne", "validation": "wline"}


def test_paragraphs_split_on_blank_lines_and_keep_indentation():
    text = "\none\n  two\n\n\n   \n  three\nfour\n\n\nlast\n"

    assert text_tasks.paragraphs(text) == ["one\n  two", "  three\nfour", "last"]


def test_text_file_task_round_trips_paragraphs_through_byte_vocabulary(tmp_path):
    train_text = "First para, h\u00e9llo \u2713.\nStill first.\n\nSecond para.\n\n"
    validation_text = "Held out.\n"
    path = tmp_path / "corpus.txt"
    path.write_text(train_text + validation_text, encoding="utf-8")
    fraction = len(validation_text) / len(train_text + validation_text)
    name = text_tasks.register_text_file_task(
        _unique("text_file"), path, validation_fraction=fraction
    )

    train = _task_targets(name, "train", length=256)
    validation = _task_targets(name, "validation", length=256)

    vocabulary = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
    assert isinstance(vocabulary, seqio.ByteVocabulary)
    assert all(targets[-1] == EOS for targets in train + validation)
    assert [vocabulary.decode(t[:-1]) for t in train] == [
        "First para, h\u00e9llo \u2713.\nStill first.",
        "Second para.",
    ]
    assert [vocabulary.decode(t[:-1]) for t in validation] == ["Held out."]
    assert train[0][:-1] == _bytes_ids("First para, h\u00e9llo \u2713.\nStill first.")


def test_missing_text_file_names_the_path_and_the_binding(tmp_path):
    missing = tmp_path / "nowhere.txt"

    with pytest.raises(UserError, match=r"nowhere\.txt.*register_text_file_task\.path"):
        text_tasks.register_text_file_task(_unique("missing"), missing)


def test_bad_validation_fraction_is_a_user_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a\n")

    with pytest.raises(UserError, match="validation_fraction=1.0"):
        text_tasks.register_text_file_task(_unique("fraction"), path, validation_fraction=1.0)


def test_reregistering_a_name_replaces_the_task(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("first\n")
    second.write_text("second\n")
    name = _unique("replaced")

    text_tasks.register_text_file_task(name, first, validation_fraction=0.0)
    text_tasks.register_text_file_task(name, second, validation_fraction=0.0)

    assert _task_targets(name, "train", length=64) == [_bytes_ids("second") + [EOS]]


def test_chunk_tokens_splits_without_dropping_tokens():
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([{"targets": np.arange(1, 11, dtype=np.int32)}, {"targets": np.int32([7])}]),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )

    chunked = chunk_tokens(dataset, {"targets": 4})

    chunks = [example["targets"].tolist() for example in chunked.as_numpy_iterator()]

    assert chunks == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10], [7]]


def test_long_document_is_chunked_not_truncated(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))  # One 1000-byte paragraph.
    path = tmp_path / "long.txt"
    path.write_text(text)
    name = text_tasks.register_text_file_task(_unique("long"), path, validation_fraction=0.0)

    chunks = _task_targets(name, "train", length=64)

    assert [len(c) for c in chunks] == [64] * 15 + [41]  # 1000 bytes + EOS = 1001 tokens.
    assert sum(chunks, []) == _bytes_ids(text) + [EOS]


def test_stdlib_task_reads_the_given_root_one_file_per_document(tmp_path):
    (tmp_path / "copy.py").write_text("held = 'out'\n")  # "copy.py" hashes to validation.
    (tmp_path / "os.py").write_text("kept = 'in'\n")
    name = text_tasks.register_stdlib_task(_unique("stdlib"), root=str(tmp_path))

    assert _task_targets(name, "train", length=64) == [_bytes_ids("kept = 'in'\n") + [EOS]]
    assert _task_targets(name, "validation", length=64) == [_bytes_ids("held = 'out'\n") + [EOS]]


def test_stdlib_task_with_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="absent_stdlib"):
        text_tasks.register_stdlib_task(_unique("stdlib"), root=str(tmp_path / "absent_stdlib"))
