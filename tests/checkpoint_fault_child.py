"""Child processes for tests/test_checkpoint_faults_e2e.py: saves that are killed or fail for real.

`python tests/checkpoint_fault_child.py MODE MODEL_DIR [ARG]`:

- `pause STAGE`: saves step 10 (keep=1), then pauses the async save of step 20
  at save stage STAGE (`Checkpointer` stages), writes `MODEL_DIR/paused` and
  sleeps until the test SIGKILLs it;
- `train-pause STAGE GIN_FILE DATA_BINDING`: the same inside a real training run of
  GIN_FILE (checkpoints at 10, 20, 30): `train` pauses at STAGE of step 20;
- `permission`: drops root privileges (to `nobody`; CI runs as root, where
  file modes stop nothing), saves step 10, loses write access to
  `checkpoints/` (chmod by its non-root owner, which the kernel enforces),
  saves step 20 and prints the error.

Step k's state is `checkpoint_fault_helpers.host_state(k)`, a deterministic
function of k, so the test can check a restore bit for bit without talking to
the child.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

from checkpoint_fault_helpers import host_state

NOBODY = 65534
PAUSED_FILENAME = "paused"


def _pause_at(stage: str, step: int, model_dir: pathlib.Path):
    def on_save_stage(current: str, current_step: int) -> None:
        if (current, current_step) == (stage, step):
            (model_dir / PAUSED_FILENAME).write_text(stage)
            time.sleep(3600)
    return on_save_stage


def pause(model_dir: pathlib.Path, stage: str) -> None:
    from llmos_jax.checkpoints.checkpointer import Checkpointer

    checkpointer = Checkpointer(model_dir, save_every=10, keep=1,
                                on_save_stage=_pause_at(stage, 20, model_dir))
    for step in (10, 20):
        checkpointer.save(step, host_state(step), {"data_position": step})
    checkpointer.wait()


def train_pause(model_dir: pathlib.Path, stage: str, gin_file: str, data_binding: str) -> None:
    import gin

    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training import trainer

    parse_gin([gin_file], [data_binding])
    trainer.train(model_dir=str(model_dir), on_save_stage=_pause_at(stage, 20, model_dir))
    gin.clear_config()


def permission(model_dir: pathlib.Path) -> int:
    import shutil
    import tempfile

    from llmos_jax.checkpoints.checkpointer import Checkpointer, CheckpointSaveFailed

    def save(directory, steps):
        checkpointer = Checkpointer(directory, save_every=10, keep=3, async_save=True)
        for step in steps:
            checkpointer.save(step, host_state(step), {"data_position": step})
            checkpointer.wait()
        return checkpointer

    if os.geteuid() == 0:  # Root ignores file modes: become an ordinary user first.
        # A first save as root loads every module a save imports lazily: the
        # interpreter's own files may be out of the ordinary user's reach.
        warm_up = pathlib.Path(tempfile.mkdtemp())
        save(warm_up, [10]).close()
        shutil.rmtree(warm_up)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    checkpointer = save(model_dir, [10])
    os.chmod(checkpointer.directory, 0o555)  # Write access lost mid-run.
    try:
        checkpointer.save(20, host_state(20), {"data_position": 20})
        checkpointer.wait()
    except CheckpointSaveFailed as error:
        print(f"CheckpointSaveFailed: {error}", flush=True)
        return 3
    finally:
        try:
            checkpointer.close()
        except CheckpointSaveFailed:
            pass
    return 0


def main(argv: list[str]) -> int:
    mode, model_dir = argv[1], pathlib.Path(argv[2])
    if mode == "pause":
        pause(model_dir, argv[3])
    elif mode == "train-pause":
        train_pause(model_dir, argv[3], argv[4], argv[5])
    elif mode == "permission":
        return permission(model_dir)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
