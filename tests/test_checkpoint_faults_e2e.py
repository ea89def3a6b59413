"""Checkpoint faults in real runs: damaged steps, SIGKILLed saves, a full disk, lost permissions.

One uninterrupted tiny run (tests/gin/tiny_run.gin on the tiny text's split
snapshot, 30 steps, checkpoints at 10, 20 and 30) is the reference. Then:

- step 30 of a copy is damaged (params data cut short, a flipped byte in the
  run metadata, the commit marker deleted): `train` warns once, moves step 30
  aside, resumes from step 20 and logs the reference's losses bit for bit;
  `llmos infer` and `llmos eval` use step 20 and change nothing on disk, and
  refuse an explicit damaged step with one line naming the file;
- child processes are SIGKILLed while a save is paused at each of its stages;
  the newest checkpoint that survives restores bit for bit, and a training
  run killed in the middle of a save resumes to the reference's losses;
- `llmos train` under a file-size limit (RLIMIT_FSIZE, as a full disk) and a
  process that lost write access as a non-root user stop with one message
  naming the step and the folder, and the last good checkpoint restores.

Child processes are used only where a real kill or limit needs one.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import gin
import pytest
from checkpoint_fault_child import NOBODY, PAUSED_FILENAME
from checkpoint_fault_helpers import (FILE_KINDS, assert_states_equal, damage, data_file,
                                      host_state, snapshot)

from llmos_jax.checkpoints.checkpointer import Checkpointer
from llmos_jax.checkpoints.fallback import restore_newest
from llmos_jax.checkpoints.locations import find_checkpoint
from llmos_jax.cli.gin_config import parse_gin
from llmos_jax.cli.main import main
from llmos_jax.monitoring.metrics_history import read_metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD = REPO_ROOT / "tests" / "checkpoint_fault_child.py"
TIMEOUT_S = 240
# tiny_run.gin on the tiny text's split snapshot (tests/tiny_snapshot.py): no TensorFlow.
RUN_GIN = (REPO_ROOT / "tests" / "gin" / "tiny_run.gin").read_text() + """
train.num_steps = 30
train.checkpoint_every = 10
train.keep_checkpoints = 10
train.eval_every = 0
train.export = False
train.sample_prompts = []
"""


def child_env(compilation_cache: bool = True) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONUNBUFFERED="1")
    if not compilation_cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["LLMOS_COMPILATION_CACHE"] = "off"  # nor the per-user default cache
    return env


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_text) -> tuple[pathlib.Path, str]:
    """The run's gin file and the binding that points it at its data."""
    root = tmp_path_factory.mktemp("fault_runs")
    gin_file = root / "run.gin"
    gin_file.write_text(RUN_GIN)
    return gin_file, f"LMBatches.snapshot_dir = {str(tiny_text[1])!r}"


def train_in_process(model_dir: pathlib.Path, files, **kwargs):
    from llmos_jax.training import trainer

    gin_file, data_binding = files
    gin.clear_config()
    try:
        parse_gin([str(gin_file)], [data_binding])
        return trainer.train(model_dir=str(model_dir), **kwargs)
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, files):
    model_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train_in_process(model_dir, files)
    assert sorted(result.train_losses) == list(range(1, 31))
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["10", "20", "30"]
    return model_dir, result.train_losses


def copy_run(reference, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(reference[0], tmp_path / "run"))


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("llmos_jax")]


@pytest.mark.parametrize("kind,fault", [("params data", "truncate"), ("run metadata", "flip"),
                                        ("commit marker", "delete")])
def test_training_falls_back_to_the_previous_step_and_matches_the_reference(
        reference, files, tmp_path, kind, fault, caplog):
    run, reference_losses = copy_run(reference, tmp_path), reference[1]
    damaged = FILE_KINDS[kind](run / "checkpoints" / "30")
    damage(damaged, fault)

    with caplog.at_level(logging.INFO, logger="llmos_jax"):
        result = train_in_process(run, files)

    (warning,) = warnings_of(caplog)
    moved = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("30.damaged-")]
    assert len(moved) == 1
    assert warning.startswith(f"checkpoint step 30 cannot be restored: {damaged}: ")
    assert warning.endswith(f"Moved it aside to {moved[0]} (nothing was deleted); resuming "
                            "from step 20.")
    assert any(r.getMessage() == f"resumed from step 20 in {run / 'checkpoints'}"
               for r in caplog.records)
    assert result.train_losses == {s: reference_losses[s] for s in range(21, 31)}
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        "10", "20", "30"]

    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    superseded = [line for line in lines if '"superseded": true' in line]
    assert len(superseded) == 10  # The first run's records of steps 21..30.
    assert {r["step"]: r["loss"] for r in read_metrics(run, "train")} == reference_losses


def run_cli(*argv: str) -> int:
    gin.clear_config()
    try:
        return main(list(argv))
    finally:
        gin.clear_config()


def test_infer_and_eval_use_the_previous_step_and_change_nothing(reference, tmp_path, caplog,
                                                                  capsys):
    run = copy_run(reference, tmp_path)
    damaged = data_file(run / "checkpoints" / "30")
    damage(damaged, "flip")
    before = snapshot(run)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The cat"}\n{"prompt": "A dog"}\n')
    infer = ("infer", f"--gin_file={run / 'config.gin'}", f"--input={prompts}",
             "--gin.DecodeConfig.max_new_tokens=6")

    with caplog.at_level(logging.WARNING, logger="llmos_jax"):
        assert run_cli(*infer, f"--checkpoint={run}", f"--output={tmp_path / 'fallback.jsonl'}") == 0
    (warning,) = warnings_of(caplog)
    assert warning == (f"checkpoint step 30 cannot be restored: {damaged}: its SHA-256 differs "
                       "from the one recorded at save time in SHA256SUMS.json (altered on disk). "
                       "Using step 20 instead; step 30 was left in place (reading never moves "
                       "files).")
    assert run_cli(*infer, f"--checkpoint={run / 'checkpoints' / '20'}",
                   f"--output={tmp_path / 'step20.jsonl'}") == 0
    assert ((tmp_path / "fallback.jsonl").read_text()
            == (tmp_path / "step20.jsonl").read_text())

    capsys.readouterr()
    explicit = str(run / "checkpoints" / "30")
    for command in (infer + (f"--output={tmp_path / 'no.jsonl'}",),
                    ("eval", f"--gin_file={run / 'config.gin'}")):
        assert run_cli(*command, f"--checkpoint={explicit}") == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"llmos: error: --checkpoint={explicit!r}: checkpoint step 30 is "
                               f"damaged: {damaged}: its SHA-256 differs")
        assert "Nothing was changed" in line
    assert not (tmp_path / "no.jsonl").exists()
    assert snapshot(run) == before


# The step that restores after a kill at each stage of saving step 20 (keep=1): before
# Orbax's commit the previous one, from the commit on the new one.
EXPECTED_AFTER_KILL = {"start": 10, "written": 10, "committed": 20, "checksummed": 20,
                       "rotating": 20}


def wait_for(path: pathlib.Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the child never paused (exit {proc.poll()}): "
                        f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        time.sleep(0.05)


def test_sigkill_at_every_save_stage_leaves_a_checkpoint_that_restores_bit_exact(tmp_path):
    children = {}
    for stage in EXPECTED_AFTER_KILL:
        (tmp_path / stage).mkdir()
        children[stage] = subprocess.Popen(
            [sys.executable, str(CHILD), "pause", str(tmp_path / stage), stage],
            env=child_env(compilation_cache=False), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
    for stage, proc in children.items():
        wait_for(tmp_path / stage / PAUSED_FILENAME, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(TIMEOUT_S) == -signal.SIGKILL

    for stage, expected in EXPECTED_AFTER_KILL.items():
        checkpointer = Checkpointer(tmp_path / stage, save_every=10, keep=1)
        restored = restore_newest(checkpointer, host_state(0), check_meta=lambda meta: None,
                                  move_damaged=True)
        assert restored.step == expected, stage
        assert_states_equal(restored.state, host_state(expected))
        assert restored.skipped == ()
        # The run goes on: the next save succeeds where the killed one left its files.
        checkpointer.save(expected + 10, host_state(expected + 10),
                          {"data_position": expected + 10})
        checkpointer.close()
        names = sorted(p.name for p in (tmp_path / stage / "checkpoints").iterdir())
        assert names == [str(expected + 10)], (stage, names)
        assert find_checkpoint(str(tmp_path / stage)).step == expected + 10


def with_file_size_limit(limit: int, argv: list[str]) -> list[str]:
    """`argv` run by a Python that first limits the size of any file it writes (RLIMIT_FSIZE)."""
    launcher = ("import os, resource, signal, sys; "
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # EFBIG instead of a kill.
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY)); "
                "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", launcher, *argv]


FILE_SIZE_LIMIT = 64 * 1024  # Above every file the run writes but a checkpoint's array data.


@pytest.fixture(scope="module", autouse=True)
def training_children(reference, files, tmp_path_factory):
    """Two `train` child processes, started as soon as the reference exists.

    Most of their time is start-up (imports), which overlaps with each other
    and with the in-process tests that run meanwhile.

    - "killed": a run from scratch that pauses once Orbax has written step 20's
      files, before it commits them;
    - "full_disk": `llmos train` resuming a copy of the reference cut back to
      step 10, under RLIMIT_FSIZE, up to step 20.
    """
    gin_file, data_binding = files
    killed = tmp_path_factory.mktemp("killed") / "run"
    killed.mkdir()
    full_disk = pathlib.Path(shutil.copytree(reference[0],
                                             tmp_path_factory.mktemp("full_disk") / "run"))
    for step in ("20", "30"):  # A run that had reached step 10.
        shutil.rmtree(full_disk / "checkpoints" / step)
    step10 = snapshot(full_disk / "checkpoints" / "10")
    assert data_file(full_disk / "checkpoints" / "10").stat().st_size > FILE_SIZE_LIMIT
    assert (full_disk / "metrics.jsonl").stat().st_size < FILE_SIZE_LIMIT // 2
    children = {
        "killed": (subprocess.Popen(
            [sys.executable, str(CHILD), "train-pause", str(killed), "written", str(gin_file),
             data_binding], env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True), killed),
        "full_disk": (subprocess.Popen(
            with_file_size_limit(FILE_SIZE_LIMIT, [
                sys.executable, "-m", "llmos_jax", "train", f"--gin_file={gin_file}",
                f"--model_dir={full_disk}",
                f"--gin.{data_binding.replace(' = ', '=')}",
                "--gin.train.num_steps=20"]),
            cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True), full_disk, step10),
    }
    yield children
    for proc, *_ in children.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_training_run_killed_mid_save_resumes_to_the_reference(reference, files,
                                                                   training_children, caplog):
    proc, run = training_children["killed"]
    wait_for(run / PAUSED_FILENAME, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT_S)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "10", "20.orbax-checkpoint-tmp"]

    with caplog.at_level(logging.INFO, logger="llmos_jax"):
        result = train_in_process(run, files)
    assert warnings_of(caplog) == []  # An uncommitted save is no checkpoint: nothing to skip.
    assert any(r.getMessage() == f"resumed from step 10 in {run / 'checkpoints'}"
               for r in caplog.records)
    assert result.train_losses == {s: reference[1][s] for s in range(11, 31)}
    # Step 20 was saved again over what the killed save had left.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["10", "20", "30"]


def test_a_full_disk_stops_training_and_keeps_the_last_good_checkpoint(training_children):
    proc, run, step10 = training_children["full_disk"]
    _, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 2, stderr[-3000:]
    # Orbax and tensorstore print their own tracebacks of the failed write around it.
    checkpoints = run / "checkpoints"
    message = re.search(
        re.escape(f"llmos: error: checkpoint step 20 could not be saved in {checkpoints}: ")
        + "[^\n]*" + re.escape(
            f"The run stopped; the last good checkpoint, step 10 ({checkpoints / '10'}), is "
            f"kept. Free disk space or restore write access to {checkpoints}, then rerun the "
            "same command to resume from step 10."), stderr)
    assert message, stderr[-5000:]
    assert "File too large" in message.group(0) and str(checkpoints / "20") in message.group(0)
    assert snapshot(checkpoints / "10") == step10
    assert find_checkpoint(str(run)).step == 10


def test_lost_write_permission_stops_the_save_and_keeps_the_last_good_checkpoint():
    # Somewhere an ordinary user can reach (pytest's tmp_path is private to root).
    model_dir = pathlib.Path(tempfile.mkdtemp(prefix="llmos-permission-"))
    try:
        if os.geteuid() == 0:
            os.chmod(model_dir, 0o755)
            os.chown(model_dir, NOBODY, NOBODY)
        done = subprocess.run([sys.executable, str(CHILD), "permission", str(model_dir)],
                              env=child_env(compilation_cache=False), capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        assert done.returncode == 3, done.stderr[-3000:]
        checkpoints = model_dir / "checkpoints"
        assert done.stdout.strip() == (
            f"CheckpointSaveFailed: checkpoint step 20 could not be saved in {checkpoints}: "
            f"Permission denied ({checkpoints / '20.orbax-checkpoint-tmp'}). The run stopped; "
            f"the last good checkpoint, step 10 ({checkpoints / '10'}), is kept. Free disk "
            f"space or restore write access to {checkpoints}, then rerun the same command to "
            "resume from step 10.")
        os.chmod(checkpoints, 0o755)
        checkpointer = Checkpointer(model_dir, save_every=10)
        restored = restore_newest(checkpointer, host_state(0), check_meta=lambda meta: None,
                                  move_damaged=True)
        checkpointer.close()
        assert restored.step == 10 and restored.skipped == ()
        assert_states_equal(restored.state, host_state(10))
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
