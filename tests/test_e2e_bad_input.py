"""Bad input to `llmos train`: one clear error line, exit status 2, and no damage on disk.

Each case gives the real command line to `llmos_jax.cli.main.main` (what the
console script and `python -m llmos_jax` run) and expects exactly one
`llmos: error: ...` line on stderr, naming the offending item and the fix, no
traceback, status 2. Where there is a model_dir, it holds a finished 5-step
checkpoint beforehand, and every file in it (or, for a run that trained before
failing, every file under checkpoints/) keeps its size and mtime.

Most cases run in-process (fast); the unknown gin file, the device-count
mismatch and the divergence run as real subprocesses, to check the exit status
and stderr of the process itself (divergence also checks that a run failing
mid-training with async checkpointing and prefetch threads exits promptly).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
from tiny_snapshot import snapshot_args

from llmos_jax.cli import main as cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_GIN = "tests/gin/tiny_train.gin"
TIMEOUT_S = 300


def snapshot(root: pathlib.Path) -> dict[str, tuple]:
    """Every entry under `root`: folders by name, files by size and mtime."""
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_dir():
            entries[relative] = ("dir",)
        else:
            stat = path.stat()
            entries[relative] = ("file", stat.st_size, stat.st_mtime_ns)
    return entries


def the_error(code: int, stderr: str) -> str:
    """The message of the single `llmos: error:` line, after checking status and stderr."""
    assert code == 2, f"exit status {code}, expected 2; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("llmos: error: ")]
    assert len(errors) == 1, f"expected one 'llmos: error:' line:\n{stderr}"
    return errors[0].removeprefix("llmos: error: ")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_text):
    """The tiny text, its split snapshot, and a model_dir holding a finished 5-step
    checkpoint, trained in-process. Runs read the snapshot (no TensorFlow in the
    subprocesses) except where the text file itself is the subject."""
    root = tmp_path_factory.mktemp("e2e_bad_input")
    corpus, split_data = tiny_text
    trained = root / "trained"
    gin.clear_config()
    try:
        code = cli.main(["train", *snapshot_args(split_data), f"--model_dir={trained}",
                         "--gin.train.num_steps=5", "--gin.train.eval_every=0"])
    finally:
        gin.clear_config()
    assert code == 0
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["5"]
    return corpus, split_data, trained


@pytest.fixture
def model_dir(setup, tmp_path):
    """A private copy (mtimes kept) of the trained model_dir."""
    trained = setup[2]
    copy = tmp_path / "model_dir"
    shutil.copytree(trained, copy)
    return copy


@pytest.fixture
def corpus(setup):
    return setup[0]


@pytest.fixture
def split_data(setup):
    return setup[1]


class InProcess:
    """Runs `llmos train ...` through `cli.main` with a clean gin config."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args: str) -> str:
        self.capsys.readouterr()
        gin.clear_config()
        try:
            code = cli.main(["train", *args])
        finally:
            gin.clear_config()
        return the_error(code, self.capsys.readouterr().err)


@pytest.fixture
def llmos(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    return InProcess(capsys)


def subprocess_llmos(*args: str, env: dict[str, str] | None = None) -> str:
    environment = dict(os.environ if env is None else env)
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-m", "llmos_jax", "train", *args], cwd=REPO_ROOT,
                          env=environment, capture_output=True, text=True, timeout=TIMEOUT_S)
    return the_error(proc.returncode, proc.stderr)


def base_args(model_dir: pathlib.Path, split_data: pathlib.Path) -> list[str]:
    return [*snapshot_args(split_data), f"--model_dir={model_dir}"]


# --- Mistakes in the config itself: caught before anything is built. ---------


def test_unknown_gin_file_suggests_the_close_match(model_dir, corpus):
    before = snapshot(model_dir)
    message = subprocess_llmos("--gin_file=tests/gin/tiny_trian.gin", f"--model_dir={model_dir}",
                               f"--gin.register_text_file_task.path={str(corpus)!r}")
    assert "gin file 'tests/gin/tiny_trian.gin' not found" in message, message
    assert "Did you mean 'tests/gin/tiny_train.gin'" in message, message  # the closest first
    assert snapshot(model_dir) == before


def test_unknown_configurable_in_gin_flag_suggests_the_close_match(llmos, model_dir, split_data):
    before = snapshot(model_dir)
    message = llmos(*base_args(model_dir, split_data), "--gin.TransformerConfg.embed_dim=48")
    assert "unknown gin configurable 'TransformerConfg'" in message, message
    assert "--gin.TransformerConfg.embed_dim" in message, message
    assert "Did you mean 'TransformerConfig'?" in message, message
    assert snapshot(model_dir) == before


def test_unknown_parameter_suggests_the_close_match(llmos, model_dir, split_data):
    before = snapshot(model_dir)
    message = llmos(*base_args(model_dir, split_data), "--gin.train.num_step=7")
    assert "train has no parameter 'num_step'" in message, message
    assert "--gin.train.num_step" in message, message
    assert "Did you mean 'num_steps'?" in message, message
    assert snapshot(model_dir) == before


# --- Mistakes found while setting up the run: nothing written. ---------------


def test_missing_data_file_is_named(llmos, model_dir, tmp_path):
    missing = tmp_path / "no_such_corpus.txt"
    before = snapshot(model_dir)
    message = llmos(f"--gin_file={TINY_GIN}", f"--model_dir={model_dir}",
                    f"--gin.register_text_file_task.path={str(missing)!r}")
    assert str(missing) in message, message
    assert "does not exist" in message and "register_text_file_task.path" in message, message
    assert snapshot(model_dir) == before


def test_mesh_that_does_not_fit_the_devices(model_dir, split_data):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"  # Explicit, not inherited.
    env["JAX_PLATFORMS"] = "cpu"
    before = snapshot(model_dir)
    message = subprocess_llmos(*base_args(model_dir, split_data), "--gin.MeshConfig.data=3",
                               env=env)
    assert "MeshConfig(data=3, fsdp=-1, tensor=1)" in message, message
    assert "8 devices" in message, message
    assert snapshot(model_dir) == before


def test_global_batch_not_divisible_by_data_parallel_size(llmos, model_dir, split_data):
    assert jax.device_count() == 8
    before = snapshot(model_dir)
    message = llmos(*base_args(model_dir, split_data), "--gin.train.global_batch_size=12")
    assert "train.global_batch_size=12" in message, message
    assert "data-parallel size 8" in message and "multiple of 8" in message, message
    assert snapshot(model_dir) == before


def test_restore_into_a_model_of_another_shape_names_the_parameter(llmos, model_dir, split_data):
    before = snapshot(model_dir)
    message = llmos(*base_args(model_dir, split_data), "--gin.TransformerConfig.embed_dim=48")
    match = re.search(r"parameter '([^']+)' has shape \(([^)]*)\) in the checkpoint but "
                      r"\(([^)]*)\) in the model", message)
    assert match, message
    name, saved, wanted = match.groups()
    assert "32" in re.findall(r"\d+", saved) and "48" in re.findall(r"\d+", wanted), message
    assert "checkpoint step 5" in message and str(model_dir / "checkpoints") in message, message
    assert "left untouched" in message, message
    assert snapshot(model_dir) == before
    # The named parameter really is in the checkpoint, with the shape the message gives.
    from llmos_jax.checkpoints.checkpointer import Checkpointer

    saved_shapes = Checkpointer(model_dir, save_every=5).saved_param_shapes(5)
    assert name in saved_shapes, (name, sorted(saved_shapes))
    assert saved_shapes[name] == tuple(int(d) for d in re.findall(r"\d+", saved))


def test_model_dir_that_cannot_be_created_is_named(llmos, tmp_path, split_data):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    model_dir = a_file / "run"
    message = llmos(*base_args(model_dir, split_data))
    assert f"model_dir '{model_dir}' is not writable" in message, message
    assert "--model_dir" in message, message
    assert a_file.read_text() == "not a folder"


# --- Divergence: found after training resumed; the good checkpoint is kept. ---


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(model_dir, split_data):
    checkpoints = model_dir / "checkpoints"
    before = snapshot(checkpoints)
    message = subprocess_llmos(*base_args(model_dir, split_data), "--gin.train.num_steps=20",
                               "--gin.warmup_then_decay.peak_learning_rate=1e30")
    match = re.search(r"training diverged at step (\d+): (loss|grad_norm|param_norm) became "
                      r"(nan|inf|-inf)", message)
    assert match, message
    assert int(match.group(1)) > 5, message
    assert f"the last good checkpoint (step 5) in {checkpoints} is kept" in message, message
    assert "peak_learning_rate" in message, message
    assert snapshot(checkpoints) == before
    import orbax.checkpoint as ocp

    params = ocp.StandardCheckpointer().restore(checkpoints / "5" / "state")["params"]
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    assert leaves and all(np.isfinite(leaf).all() for leaf in leaves)
    assert math.isfinite(sum(float(np.abs(leaf).sum()) for leaf in leaves))


def test_divergence_never_saves_blown_up_parameters_as_a_good_checkpoint(llmos, model_dir,
                                                                         split_data):
    import orbax.checkpoint as ocp

    checkpoints = model_dir / "checkpoints"
    message = llmos(*base_args(model_dir, split_data), "--gin.train.num_steps=20",
                    "--gin.train.checkpoint_every=1", "--gin.train.eval_every=0",
                    "--gin.warmup_then_decay.peak_learning_rate=1e30")
    kept = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert f"the last good checkpoint (step {kept[-1]})" in message, message
    for step in kept:
        params = ocp.StandardCheckpointer().restore(checkpoints / str(step) / "state")["params"]
        largest = max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree.leaves(params))
        assert largest < 1e6, f"checkpoint {step} kept as good has |param| up to {largest:.3g}"
