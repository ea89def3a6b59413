"""Multi-host training through the CLI: `llmos launch --local=2 -- train ...`.

Two local processes with 4 simulated CPU devices each train on a mesh that
spans both (fsdp=8, tests/gin/tiny_run.gin on the tiny text's split snapshot,
tests/tiny_snapshot.py), each reading only its half of
every batch and joining through `--coordinator_address`, as two hosts would.
They must match one process with all 8 devices: the same losses and the same
checkpoint (to float rounding: the cross-process all-reduce may add in another
order). A third run then resumes the two-process layout from the two-process
run's step-2 checkpoint and must continue bit for bit like the uninterrupted
run. Only process 0 writes metrics and prints samples; both write checkpoints.

The single-process reference and the two-process run start together to share
their start-up time.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_e2e_train_cli import REPO_ROOT, subprocess_env
from tiny_snapshot import snapshot_args

TIMEOUT_S = 300
RUN = ("--gin.train.num_steps=4", "--gin.train.checkpoint_every=2", "--gin.train.eval_every=0")
NO_SAMPLES = "--gin.train.sample_prompts=[]"


def train_args(model_dir: pathlib.Path, snapshot: pathlib.Path, *extra: str) -> list[str]:
    return ["train", *snapshot_args(snapshot), f"--model_dir={model_dir}", *RUN, *extra]


def launch_argv(model_dir, snapshot, *extra) -> list[str]:
    return [sys.executable, "-m", "llmos_jax", "launch", "--local=2", "--local_cpu_devices=4",
            "--", *train_args(model_dir, snapshot, *extra)]


def start(argv: list[str], log: pathlib.Path) -> subprocess.Popen:
    with open(log, "w") as out:  # A file, so output never blocks a run.
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=subprocess_env(), stdout=out,
                                stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: pathlib.Path) -> str:
    try:
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output[-6000:]
    return output


def train_losses(model_dir: pathlib.Path) -> dict[int, float]:
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    train = [r for r in records if r["split"] == "train" and not r.get("superseded")]
    steps = [r["step"] for r in train]
    assert len(steps) == len(set(steps)), f"a step was logged twice (by two hosts?): {steps}"
    return {r["step"]: r["loss"] for r in train}


def checkpoint_state(model_dir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """Every array of a saved train state (params, optimizer state, step), as numpy by path."""
    path = model_dir / "checkpoints" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path)
        tree = getattr(metadata, "item_metadata", metadata).tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(key): np.asarray(leaf) for key, leaf in leaves}


def checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_text) -> dict[str, tuple[pathlib.Path, str]]:
    root = tmp_path_factory.mktemp("multihost_cli")
    snapshot = tiny_text[1]  # No process imports TensorFlow.
    one, two, resumed = root / "one_process", root / "two_processes", root / "resumed"
    one_proc = start([sys.executable, "-m", "llmos_jax", *train_args(one, snapshot, NO_SAMPLES)],
                     root / "one.log")
    two_proc = start(launch_argv(two, snapshot), root / "two.log")
    outputs = {"one": finish(one_proc, root / "one.log"),
               "two": finish(two_proc, root / "two.log")}
    # The two-process run as if stopped right after its step-2 checkpoint.
    shutil.copytree(two / "checkpoints" / "2", resumed / "checkpoints" / "2")
    outputs["resumed"] = finish(start(launch_argv(resumed, snapshot, NO_SAMPLES),
                                      root / "resumed.log"), root / "resumed.log")
    return {"one": (one, outputs["one"]), "two": (two, outputs["two"]),
            "resumed": (resumed, outputs["resumed"])}


def test_two_processes_join_one_run_and_only_the_chief_reports(runs):
    model_dir, output = runs["two"]
    for index in range(2):
        assert f"[{index}] INFO llmos_jax.distributed: process {index} of 2 (explicit); " \
               "4 local of 8 devices" in output, output[-4000:]
    assert "'fsdp': 8" in output  # One mesh over both processes' devices.
    assert output.count("--- samples after 4 steps") == 1  # Both sample; the chief prints.
    assert "[0] --- samples after 4 steps" in output
    assert sorted(train_losses(model_dir)) == [1, 2, 3, 4]
    assert checkpoint_steps(model_dir) == [2, 4]
    assert (model_dir / "export" / "meta.json").is_file()


def test_two_processes_train_like_one_with_eight_devices(runs):
    one, two = runs["one"][0], runs["two"][0]
    assert train_losses(two) == pytest.approx(train_losses(one), rel=1e-5)
    one_state, two_state = checkpoint_state(one, 4), checkpoint_state(two, 4)
    assert one_state.keys() == two_state.keys()
    for key in one_state:
        np.testing.assert_allclose(two_state[key], one_state[key], rtol=1e-4, atol=1e-5,
                                   err_msg=key)


def test_resume_on_two_processes_continues_bit_exact(runs):
    two, resumed = runs["two"][0], runs["resumed"][0]
    assert "resumed from step 2" in runs["resumed"][1]
    losses = train_losses(resumed)
    assert sorted(losses) == [3, 4]
    assert losses == {step: train_losses(two)[step] for step in (3, 4)}  # Exactly equal.
    two_state, resumed_state = checkpoint_state(two, 4), checkpoint_state(resumed, 4)
    assert two_state.keys() == resumed_state.keys()
    for key in two_state:
        np.testing.assert_array_equal(resumed_state[key], two_state[key], err_msg=key)
