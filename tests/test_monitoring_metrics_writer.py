"""MetricsWriter: JSONL lines and TensorBoard events hold the written numbers."""

import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from llmos_jax.errors import UserError
from llmos_jax.monitoring.metrics_writer import MetricsWriter


def read_jsonl(model_dir):
    with open(model_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_events(run_dir):
    """Summary values as (step, tag, value) from TFRecord-framed event files."""
    values = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            offset += 12  # length + its CRC
            event = event_pb2.Event.FromString(data[offset : offset + length])
            offset += length + 4  # payload + its CRC
            for value in event.summary.value:
                if value.HasField("tensor"):
                    payload = value.tensor.string_val[0].decode()
                else:
                    payload = value.simple_value
                values.append((event.step, value.tag, payload))
    return values


def test_scalars_of_every_accepted_kind_are_written(tmp_path):
    before = time.time()
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(
            7,
            {"loss": 2.5, "lr": np.float32(0.25), "acc": np.asarray(0.75), "norm": jnp.array(3.25)},
        )
    (record,) = read_jsonl(tmp_path)
    assert before <= record.pop("time") <= time.time()
    assert record == {"step": 7, "split": "train", "loss": 2.5, "lr": 0.25, "acc": 0.75, "norm": 3.25}
    assert sorted(read_events(tmp_path / "tensorboard" / "train")) == [
        (7, "acc", 0.75), (7, "loss", 2.5), (7, "lr", 0.25), (7, "norm", 3.25),
    ]


def test_splits_are_separate_tensorboard_runs(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(1, {"loss": 4.0})
        writer.write_scalars(1, {"loss": 5.0}, split="eval")
    assert [(r["split"], r["loss"]) for r in read_jsonl(tmp_path)] == [("train", 4.0), ("eval", 5.0)]
    assert read_events(tmp_path / "tensorboard" / "train") == [(1, "loss", 4.0)]
    assert read_events(tmp_path / "tensorboard" / "eval") == [(1, "loss", 5.0)]


def test_non_finite_values_become_strings_in_jsonl(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(3, {"a": float("nan"), "b": np.inf, "c": -np.inf})
    (record,) = read_jsonl(tmp_path)
    assert (record["a"], record["b"], record["c"]) == ("nan", "inf", "-inf")


def test_text_goes_to_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write_text(5, "sample", "The cat sat.")
    (record,) = read_jsonl(tmp_path)
    assert {k: v for k, v in record.items() if k != "time"} == {
        "step": 5, "split": "text", "sample": "The cat sat.",
    }
    assert read_events(tmp_path / "tensorboard" / "text") == [
        (5, "sample/text_summary", "The cat sat.")
    ]


def test_reopening_appends_to_the_same_file(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(1, {"loss": 3.0})
    with MetricsWriter(tmp_path) as writer:
        writer.write_scalars(2, {"loss": 2.0})
    assert [(r["step"], r["loss"]) for r in read_jsonl(tmp_path)] == [(1, 3.0), (2, 2.0)]


def test_flush_makes_lines_and_events_visible_before_close(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write_scalars(1, {"loss": 1.5})
    writer.flush()
    assert [r["loss"] for r in read_jsonl(tmp_path)] == [1.5]
    assert read_events(tmp_path / "tensorboard" / "train") == [(1, "loss", 1.5)]
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write_scalars(2, {"loss": 1.0})


def test_disabled_writer_creates_nothing(tmp_path):
    model_dir = tmp_path / "run"
    with MetricsWriter(model_dir, enabled=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
        writer.write_text(1, "sample", "hi")
        writer.flush()
    assert not model_dir.exists()


NOBODY = 65534  # The unprivileged user of Debian-like systems.

# Constructs a MetricsWriter in a locked folder as the user `nobody`, since root writes
# through any permission bits; prints the UserError it raises.
_AS_NOBODY = """
import os, sys
from llmos_jax.errors import UserError
from llmos_jax.monitoring.metrics_writer import MetricsWriter
os.setgid({uid}); os.setuid({uid})  # After the imports: the interpreter may live under /root.
try:
    MetricsWriter(sys.argv[1])
except UserError as error:
    print("UserError:", error)
"""


def test_unwritable_directory_is_a_user_error(tmp_path):
    if os.geteuid() != 0:
        model_dir = tmp_path / "locked"
        model_dir.mkdir()
        model_dir.chmod(0o500)
        try:
            with pytest.raises(UserError, match="locked"):
                MetricsWriter(model_dir)
        finally:
            model_dir.chmod(0o700)
        return
    # As root (CI), the check runs as an ordinary user in a child process.
    parent = pathlib.Path(tempfile.mkdtemp(prefix="llmos-metrics-"))
    try:
        parent.chmod(0o755)  # nobody may enter, not write
        model_dir = parent / "locked"
        model_dir.mkdir(mode=0o555)
        done = subprocess.run([sys.executable, "-c", _AS_NOBODY.format(uid=NOBODY),
                               str(model_dir)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.startswith("UserError:") and "locked" in done.stdout, done.stdout
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_model_dir_that_is_a_file_is_a_user_error(tmp_path):
    not_a_dir = tmp_path / "oops.txt"
    not_a_dir.write_text("")
    with pytest.raises(UserError, match="oops.txt"):
        MetricsWriter(not_a_dir)


def test_reserved_metric_name_is_a_user_error(tmp_path):
    with MetricsWriter(tmp_path) as writer, pytest.raises(UserError, match="'step'"):
        writer.write_scalars(1, {"step": 1.0})


def test_non_scalar_metric_is_rejected(tmp_path):
    with MetricsWriter(tmp_path) as writer, pytest.raises(ValueError, match="'loss'.*shape \\(2,\\)"):
        writer.write_scalars(1, {"loss": np.array([1.0, 2.0])})
