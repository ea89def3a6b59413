"""Split snapshots of tests/gin/tiny_train.gin's text-file task, for end-to-end runs.

Most end-to-end tests start several `llmos train` subprocesses to test what
happens around the data (resuming, several hosts, alerts, tracking, bad
input), not the data itself. Reading the text file through seqio makes each
of those processes import TensorFlow and trace its tf.data pipeline: about
a third of a tiny run's CPU time and 1 GB of its memory. Those tests train on
a snapshot of the same splits instead (`LMBatches.snapshot_dir`, the path a
host without TensorFlow takes), made once per test process with seqio: the
batches are the same step for step (tests/test_data_split_snapshot.py), and
the seqio path itself stays covered by test_e2e_train_cli.py and the data
tests.
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
import sys

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_TRAIN_GIN = REPO_ROOT / "tests" / "gin" / "tiny_train.gin"
TINY_RUN_GIN = REPO_ROOT / "tests" / "gin" / "tiny_run.gin"


def write_corpus(path: pathlib.Path, paragraphs: int = 60, seed: int = 0) -> pathlib.Path:
    """A few KB of repetitive, learnable English-like text, in blank-line paragraphs."""
    rng = random.Random(seed)
    words = ("the cat sat on a mat and the dog ran to the red barn while birds sang in "
             "old green trees").split()
    paras = []
    for _ in range(paragraphs):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 10))).capitalize() + "."
                 for _ in range(4)]
        paras.append("\n".join(lines))
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


def make_tiny_snapshot(corpus: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """Snapshots the splits tiny_train.gin reads from `corpus`, with tools/snapshot_splits.py."""
    spec = importlib.util.spec_from_file_location(
        "snapshot_splits", REPO_ROOT / "tools" / "snapshot_splits.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        code = tool.main([f"--gin_file={TINY_TRAIN_GIN}", f"--output_dir={directory}",
                          f"--gin.register_text_file_task.path={str(corpus)!r}"])
    finally:
        gin.clear_config()
    assert code == 0, f"tools/snapshot_splits.py exited {code}"
    return directory


def snapshot_args(snapshot_dir: pathlib.Path) -> list[str]:
    """`llmos train` flags for tiny_run.gin on `snapshot_dir` (no seqio, no TensorFlow)."""
    return [f"--gin_file={TINY_RUN_GIN}", f"--gin.LMBatches.snapshot_dir={str(snapshot_dir)!r}"]


def snapshot_train_argv(model_dir: pathlib.Path, snapshot_dir: pathlib.Path,
                        *overrides: str) -> list[str]:
    """`python -m llmos_jax train` on tiny_run.gin and `snapshot_dir`, then `overrides`."""
    return [sys.executable, "-m", "llmos_jax", "train", *snapshot_args(snapshot_dir),
            f"--model_dir={model_dir}", *overrides]
