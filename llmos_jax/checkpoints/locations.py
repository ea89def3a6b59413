"""Finding saved weights: a run's newest intact checkpoint, one step, or an export.

`--checkpoint` may be a run's `model_dir` (its newest checkpoint that
verifies), its `checkpoints/` folder (the same), one step folder
(`checkpoints/<step>`, used as is or refused), a params-only export
(`model_dir/export`) or the best step's export (`model_dir/best`).

Reading never changes anything on disk: damaged steps are skipped with a
warning and left in place (a live run may be writing them); an explicit step
or an export that is damaged is refused with one message naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from llmos_jax.checkpoints.checkpointer import STATE_ITEM, Checkpointer, committed_steps
from llmos_jax.checkpoints.exports import META_FILENAME, PARAMS_DIRNAME, check_export
from llmos_jax.checkpoints.fallback import SkippedStep, newest_intact
from llmos_jax.errors import UserError

# Folders `export_params` writes that sit inside a run's model_dir.
EXPORT_DIRNAMES = ("export", "best")
CHECKPOINTS_DIRNAME = "checkpoints"
PARAMS_KEY = "params"  # The TrainState's field in a step's `state` item.


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    """Where parameters come from, and what was recorded with them.

    Attributes:
      path: The folder given (model_dir, checkpoints/, a step folder, export or best).
      step: The training step of the weights (0 for an export without metadata).
      meta: The JSON saved with them (model config, vocabulary, data position).
      model_dir: The run folder.
      params_item: The Orbax item holding the parameters: a step's `state` or
        an export's `params`.
      params_key: Where the parameters are inside that item (`params` in a
        step's state; None: the whole export item).
      skipped: Newer steps that were damaged and skipped (left in place).
    """

    path: pathlib.Path
    step: int
    meta: dict[str, Any]
    model_dir: pathlib.Path
    params_item: pathlib.Path
    params_key: str | None = None
    skipped: tuple[SkippedStep, ...] = ()


def _export(path: pathlib.Path, flag: str) -> CheckpointLocation:
    check_export(path, flag=flag)
    meta_file = path / META_FILENAME
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    model_dir = path.parent if path.name in EXPORT_DIRNAMES else path
    return CheckpointLocation(path, int(meta.get("step", 0)), meta, model_dir,
                              path / PARAMS_DIRNAME)


def _one_step(path: pathlib.Path, location: str, flag: str) -> CheckpointLocation:
    step, model_dir = int(path.name), path.parent.parent
    checkpointer = Checkpointer(model_dir, save_every=1, read_only=True)
    try:
        damage = checkpointer.check(step)
        if damage is not None:
            raise UserError(f"{flag}={location!r}: checkpoint step {step} is damaged: {damage}. "
                            "Nothing was changed. Give the run's model_dir "
                            f"({model_dir}) to use its newest intact checkpoint instead.")
        meta = checkpointer.read_meta(step)
    finally:
        checkpointer.close()
    return CheckpointLocation(path, step, meta, model_dir, path / STATE_ITEM, PARAMS_KEY)


def find_checkpoint(location: str, *, flag: str = "--checkpoint") -> CheckpointLocation:
    """The export, the given step, or the newest intact checkpoint at `location`.

    Raises:
      UserError: the folder is missing or holds neither an export nor a
        checkpoint; the export or the step given is damaged; or no checkpoint
        of the run verifies.
    """
    path = pathlib.Path(location).expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"{flag}={location!r}: {path} is not a directory; give a run's "
                        "model_dir, its checkpoints/ folder or its export/ folder.")
    if (path / PARAMS_DIRNAME).is_dir():
        return _export(path, flag)
    if path.name.isdigit() and path.parent.name == CHECKPOINTS_DIRNAME:
        return _one_step(path, location, flag)
    checkpoints = path / CHECKPOINTS_DIRNAME if (path / CHECKPOINTS_DIRNAME).is_dir() else path
    if not committed_steps(checkpoints):
        raise UserError(f"{flag}={location!r} holds no checkpoint (no {path}/checkpoints/<step>) "
                        f"and no export (no {path}/params); train first, or point at the run's "
                        "model_dir or export/ folder.")
    checkpointer = Checkpointer(checkpoints.parent, save_every=1, read_only=True)
    try:
        step, skipped = newest_intact(checkpointer)
        if step is None:
            listing = "; ".join(f"step {s.step}: {s.damage}" for s in skipped)
            raise UserError(f"{flag}={location!r}: no checkpoint in {checkpoints} verifies "
                            f"({listing}). Nothing was changed; give an export folder, or "
                            "restore the files from a copy.")
        meta = checkpointer.read_meta(step)
    finally:
        checkpointer.close()
    return CheckpointLocation(path, step, meta, checkpoints.parent,
                              checkpointer.step_path(step) / STATE_ITEM, PARAMS_KEY, tuple(skipped))
