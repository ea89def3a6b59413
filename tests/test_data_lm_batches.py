"""LMBatches: batch = f(seed, step), host slicing, packing and eval passes."""

import pathlib
import uuid

import gin
import numpy as np
import pytest

from llmos_jax.data import text_tasks
from llmos_jax.data.lm_batches import LMBatches
from llmos_jax.errors import UserError

LENGTH = 16
BATCH = 4
PACKED_KEYS = {
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
}


def _as_row_set(batch: dict[str, np.ndarray]) -> list[bytes]:
    return sorted(row.tobytes() for row in batch["decoder_target_tokens"])


@pytest.fixture(scope="module")
def task_name(tmp_path_factory) -> str:
    """A tiny text task: 40 distinct paragraphs of 3..30 bytes; empty validation."""
    paragraphs = [f"p{i:02d} " + "xyz"[i % 3] * (i % 28) for i in range(40)]
    path: pathlib.Path = tmp_path_factory.mktemp("lm") / "tiny.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return text_tasks.register_text_file_task(
        f"lm_batches_{uuid.uuid4().hex[:8]}", path, validation_fraction=0.0
    )


@pytest.fixture(scope="module")
def packed(task_name) -> LMBatches:
    return LMBatches(task_name, "train", LENGTH, BATCH, seed=3, process_index=0, process_count=1)


def test_keys_shapes_and_dtypes(task_name, packed):
    unpacked = LMBatches(
        task_name, "train", LENGTH, BATCH, pack=False, process_index=0, process_count=1
    )

    batch = packed.batch_at(0)
    assert set(batch) == PACKED_KEYS
    for key, array in batch.items():
        assert array.shape == (BATCH, LENGTH)
        assert array.dtype == (np.float32 if key == "decoder_loss_weights" else np.int32)
    assert set(unpacked.batch_at(0)) == PACKED_KEYS - {"decoder_segment_ids", "decoder_positions"}
    # 40 paragraphs of 4..31 bytes plus EOS; the 16 with i % 28 >= 12 exceed 16 tokens: 2 chunks.
    assert unpacked.num_examples == 40 + 16
    assert packed.num_examples < unpacked.num_examples
    assert packed.vocabulary.vocab_size == 259


def test_resume_equals_uninterrupted_and_steps_differ(task_name, packed):
    fresh = LMBatches(task_name, "train", LENGTH, BATCH, seed=3, process_index=0, process_count=1)

    for step in (0, 5, 123):
        for key in PACKED_KEYS:
            np.testing.assert_array_equal(fresh.batch_at(step)[key], packed.batch_at(step)[key])
    assert _as_row_set(packed.batch_at(0)) != _as_row_set(packed.batch_at(1))


def test_seed_changes_the_order(task_name, packed):
    other = LMBatches(task_name, "train", LENGTH, BATCH, seed=4, process_index=0, process_count=1)

    steps = range(3)
    assert [_as_row_set(other.batch_at(s)) for s in steps] != [
        _as_row_set(packed.batch_at(s)) for s in steps
    ]


def test_each_epoch_visits_every_row_once(packed):
    n = packed.num_examples
    steps = -(-2 * n // BATCH)  # Two epochs, with a batch straddling the boundary.
    rows = np.concatenate(
        [packed.global_batch_at(s)["decoder_target_tokens"] for s in range(steps)]
    )
    stored = np.concatenate([b["decoder_target_tokens"] for b in packed.eval_batches()])[:n]

    assert sorted(r.tobytes() for r in rows[:n]) == sorted(r.tobytes() for r in stored)
    assert sorted(r.tobytes() for r in rows[n : 2 * n]) == sorted(r.tobytes() for r in stored)
    assert not np.array_equal(rows[:n], rows[n : 2 * n])  # Each epoch is reshuffled.


def test_packed_features_are_consistent(packed):
    batch = packed.global_batch_at(7)
    targets = batch["decoder_target_tokens"]
    inputs = batch["decoder_input_tokens"]
    segments = batch["decoder_segment_ids"]
    positions = batch["decoder_positions"]

    np.testing.assert_array_equal(batch["decoder_loss_weights"], (targets != 0).astype(np.float32))
    np.testing.assert_array_equal(segments == 0, targets == 0)
    for row in range(BATCH):
        for t in range(LENGTH):
            if segments[row, t] == 0:
                assert positions[row, t] == 0
                continue
            starts_segment = t == 0 or segments[row, t] != segments[row, t - 1]
            if starts_segment:
                assert positions[row, t] == 0 and inputs[row, t] == 0
            else:
                assert positions[row, t] == positions[row, t - 1] + 1
                assert inputs[row, t] == targets[row, t - 1]


def test_two_hosts_split_the_global_batch(task_name, packed):
    hosts = [
        LMBatches(task_name, "train", LENGTH, BATCH, seed=3, process_index=i, process_count=2)
        for i in range(2)
    ]

    for step in (0, 9):
        whole = packed.global_batch_at(step)
        halves = [host.batch_at(step) for host in hosts]
        for key in PACKED_KEYS:
            assert halves[0][key].shape == (BATCH // 2, LENGTH)
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
            np.testing.assert_array_equal(hosts[1].global_batch_at(step)[key], whole[key])


def test_eval_batches_pass_once_in_order_and_pad_with_zero_weight(task_name):
    hosts = [
        LMBatches(task_name, "train", LENGTH, 6, process_index=i, process_count=2) for i in range(2)
    ]
    n = hosts[0].num_examples
    expected_batches = -(-n // 6)

    passes = [list(host.eval_batches()) for host in hosts]
    assert [len(p) for p in passes] == [expected_batches, expected_batches]
    assert len(list(hosts[0].eval_batches(2))) == 2
    def global_rows(key: str) -> np.ndarray:
        """Each global eval batch rebuilt as host 0's rows then host 1's."""
        return np.concatenate([np.concatenate([a[key], b[key]]) for a, b in zip(*passes)])

    rows = global_rows("decoder_target_tokens")
    weights = global_rows("decoder_loss_weights")
    assert rows.shape == (expected_batches * 6, LENGTH)
    assert (weights[n:] == 0).all() and (rows[n:] == 0).all()
    assert (weights[:n].sum(axis=1) > 0).all()
    assert len({r.tobytes() for r in rows[:n]}) == n  # Every stored row once.


def test_max_examples_limits_rows(task_name):
    limited = LMBatches(task_name, "train", LENGTH, BATCH, max_examples=5)  # Host from jax.

    assert limited.num_examples == 5


def test_indivisible_global_batch_is_a_user_error(task_name):
    with pytest.raises(UserError, match="global_batch_size=5"):
        LMBatches(task_name, "train", LENGTH, 5, process_index=0, process_count=2)


def test_empty_split_names_task_and_split(task_name):
    with pytest.raises(UserError, match=f"'validation'.*'{task_name}'"):
        LMBatches(task_name, "validation", LENGTH, BATCH, process_index=0, process_count=1)


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="'no_such_task'"):
        LMBatches("no_such_task", "train", LENGTH, BATCH, process_index=0, process_count=1)


def test_gin_registers_the_task_and_builds_batches(tmp_path):
    path = tmp_path / "gin.txt"
    path.write_text("alpha\n\nbeta\n")
    name = f"gin_task_{uuid.uuid4().hex[:8]}"
    try:
        gin.parse_config(
            f"""
            register_text_file_task.name = '{name}'
            register_text_file_task.path = '{path}'
            register_text_file_task.validation_fraction = 0.0
            LMBatches.task_name = @register_text_file_task()
            LMBatches.split = 'train'
            LMBatches.sequence_length = {LENGTH}
            LMBatches.global_batch_size = 2
            """
        )
        batches = LMBatches(process_index=0, process_count=1)
    finally:
        gin.clear_config()

    # "alpha" + EOS and "beta" + EOS (11 tokens) pack into one 16-token row.
    assert batches.num_examples == 1
    vocabulary = batches.vocabulary
    expected = vocabulary.encode("alpha") + [1] + vocabulary.encode("beta") + [1] + [0] * 5
    assert batches.batch_at(0)["decoder_target_tokens"][0].tolist() == expected
