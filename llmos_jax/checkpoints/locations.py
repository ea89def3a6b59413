"""Finding saved weights: a run's latest checkpoint, or an export, with its metadata.

`--checkpoint` may be a run's `model_dir` (its latest checkpoint), its
`checkpoints/` folder, a params-only export (`model_dir/export`) or the best
step's export (`model_dir/best`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from llmos_jax.checkpoints.checkpointer import Checkpointer
from llmos_jax.errors import UserError

# Folders `export_params` writes that sit inside a run's model_dir.
EXPORT_DIRNAMES = ("export", "best")


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    """Where parameters come from, and what was recorded with them.

    Attributes:
      path: What `params_reader.read_our_params` reads (model_dir, checkpoints/, export
        or best).
      step: The training step of the weights (0 for an export without metadata).
      meta: The JSON saved with them (model config, vocabulary, data position).
      model_dir: The run folder.
    """

    path: pathlib.Path
    step: int
    meta: dict[str, Any]
    model_dir: pathlib.Path


def find_checkpoint(location: str, *, flag: str = "--checkpoint") -> CheckpointLocation:
    """The export or latest checkpoint at `location`, with its metadata.

    Raises:
      UserError: the folder is missing or holds neither an export nor a checkpoint.
    """
    path = pathlib.Path(location).expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"{flag}={location!r}: {path} is not a directory; give a run's "
                        "model_dir, its checkpoints/ folder or its export/ folder.")
    if (path / "params").is_dir():  # `export_params`.
        meta_file = path / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        model_dir = path.parent if path.name in EXPORT_DIRNAMES else path
        return CheckpointLocation(path, int(meta.get("step", 0)), meta, model_dir)
    checkpoints = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and p.is_dir())
    if not steps:
        raise UserError(f"{flag}={location!r} holds no checkpoint (no {path}/checkpoints/<step>) "
                        f"and no export (no {path}/params); train first, or point at the run's "
                        "model_dir or export/ folder.")
    checkpointer = Checkpointer(checkpoints.parent, save_every=1, async_save=False)
    try:
        meta = checkpointer.read_meta(steps[-1])
    finally:
        checkpointer.close()
    return CheckpointLocation(path, steps[-1], meta, checkpoints.parent)
