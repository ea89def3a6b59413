"""ExampleBatches: padding and reported truncation, batch = f(seed, step), host slices, eval pass."""

import logging
import uuid

import numpy as np
import pytest
import seqio
import tensorflow as tf

from llmos_jax.data.example_batches import ExampleBatches
from llmos_jax.errors import UserError

NUM_EXAMPLES = 37


def example_rows():
    """Example i: input_ids [i+1, ..., ] of length 1 + i % 9; label i % 3; tags."""
    rows = []
    for i in range(NUM_EXAMPLES):
        ids = [i + 1] * (1 + i % 9)
        rows.append({"input_ids": ids, "labels": [i % 2] * len(ids), "label": i % 3})
    return rows


@pytest.fixture(scope="module")
def task_name():
    name = f"example_batches_{uuid.uuid4().hex[:8]}"
    rows = example_rows()

    def dataset(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices({
            "input_ids": tf.ragged.constant([r["input_ids"] for r in rows], dtype=tf.int32),
            "labels": tf.ragged.constant([r["labels"] for r in rows], dtype=tf.int32),
            "label": tf.constant([r["label"] for r in rows], tf.int32),
            "text_pretokenized": tf.constant([f"row {i}" for i in range(NUM_EXAMPLES)]),
        })

    vocabulary = seqio.PassThroughVocabulary(size=64)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset, splits=["train", "validation"]),
        preprocessors=[],
        output_features={"input_ids": seqio.Feature(vocabulary, add_eos=False)})
    yield name
    seqio.TaskRegistry.remove(name)


def make(task_name, **kwargs):
    options = dict(seed=0)
    options.update(kwargs)
    return ExampleBatches(task_name, options.pop("split", "train"), options.pop("length", 6),
                          options.pop("batch", 8), **options)


def test_features_are_padded_and_cut_and_the_cut_is_reported(task_name, caplog):
    with caplog.at_level(logging.WARNING, logger="llmos_jax.data"):
        data = make(task_name)
    assert data.num_examples == NUM_EXAMPLES
    first = data.global_batch_at(0)
    assert set(first) == {"input_ids", "labels", "label"}  # strings dropped
    assert first["input_ids"].shape == (8, 6) and first["input_ids"].dtype == np.int32
    assert first["label"].shape == (8,)
    rows = {int(ids[0]) - 1: ids for ids in first["input_ids"]}
    for i, ids in rows.items():
        length = 1 + i % 9
        np.testing.assert_array_equal(ids, [i + 1] * min(length, 6) + [0] * max(6 - length, 0))
    # Lengths 7, 8, 9 (i % 9 in 6..8) are cut: 12 examples, (1+2+3) tokens each per 3 rows.
    cut = data.truncation.features["input_ids"]
    assert cut.truncated_examples == 12 and cut.truncated_tokens == 4 * (1 + 2 + 3)
    assert data.truncation.truncated_examples == 12
    assert "cuts 12 of 37 examples" in caplog.text


def test_batch_is_a_function_of_seed_and_step(task_name):
    a, b = make(task_name), make(task_name)  # b: a "resumed" process
    for step in (0, 3, 11):
        for key in ("input_ids", "label"):
            np.testing.assert_array_equal(a.batch_at(step)[key], b.batch_at(step)[key])
    other = make(task_name, seed=1)
    assert not np.array_equal(a.batch_at(0)["input_ids"], other.batch_at(0)["input_ids"])


def test_an_epoch_visits_every_example_once(task_name):
    data = make(task_name, batch=NUM_EXAMPLES)
    first_ids = data.global_batch_at(0)["input_ids"][:, 0]
    assert sorted(first_ids.tolist()) == list(range(1, NUM_EXAMPLES + 1))


def test_two_hosts_read_disjoint_halves_of_the_global_batch(task_name):
    whole = make(task_name)
    hosts = [make(task_name, process_index=i, process_count=2) for i in range(2)]
    for step in (0, 5):
        parts = [h.batch_at(step) for h in hosts]
        assert parts[0]["input_ids"].shape == (4, 6)
        for key in ("input_ids", "labels", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]),
                                          whole.global_batch_at(step)[key])
        ids = [set(p["input_ids"][:, 0].tolist()) for p in parts]
        assert not ids[0] & ids[1]


def test_eval_walks_the_split_once_in_order_then_pads(task_name):
    data = make(task_name, split="validation")
    batches = list(data.eval_batches())
    assert len(batches) == 5  # ceil(37 / 8)
    ids = np.concatenate([b["input_ids"][:, 0] for b in batches])
    assert ids[:NUM_EXAMPLES].tolist() == list(range(1, NUM_EXAMPLES + 1))
    assert not ids[NUM_EXAMPLES:].any() and not batches[-1]["label"][5:].any()
    assert len(list(data.eval_batches(2))) == 2


def test_bad_settings_are_user_errors(task_name):
    with pytest.raises(UserError, match="train.pack = False"):
        make(task_name, pack=True)
    with pytest.raises(UserError, match=r"no length for features \['labels'\]"):
        make(task_name, length={"input_ids": 6})
    with pytest.raises(UserError, match="multiple of the process count 3"):
        make(task_name, process_count=3)
