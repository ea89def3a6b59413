"""The newest checkpoint that restores: skipping damaged steps, and moving them aside.

A step is skipped when its files differ from their checksums, when its save
was interrupted, or (for steps written before checksums existed) when Orbax
cannot read it. Training (`restore_newest`) then resumes from the newest step
that restores; the chief renames each skipped step folder to
`<step>.damaged-<UTC time>` (never deleting it), after every host has agreed
on the step, so a later save of that step does not collide with it. Readers
(`newest_intact`: `llmos eval`, `llmos infer`, warm starts) skip the same
steps but move nothing: a step may belong to a run that is still writing it.
Each skipped step is one warning naming the file at fault and what was done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from typing import Any, Callable, Generic, TypeVar

import jax
import numpy as np

from llmos_jax.checkpoints.checkpointer import Checkpointer, DamagedCheckpoint, SavedState
from llmos_jax.checkpoints.manifest import Damage
from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.checkpoints")

DAMAGED_INFIX = ".damaged-"
State = TypeVar("State", bound=SavedState)


@dataclasses.dataclass(frozen=True)
class SkippedStep:
    """A checkpoint step that could not be used.

    Attributes:
      step: The step.
      damage: The file at fault and what is wrong with it.
      moved_to: Where the step folder was renamed to (None: left in place).
    """

    step: int
    damage: Damage
    moved_to: pathlib.Path | None = None


@dataclasses.dataclass(frozen=True)
class Restored(Generic[State]):
    """The state restored by `restore_newest`, its step, and the newer steps skipped."""

    step: int
    state: State
    skipped: tuple[SkippedStep, ...] = ()


def _chief_decides(ok: bool) -> bool:
    """The chief's verdict on every host (its checks are the ones that count)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(ok)))


def _sync_hosts(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def move_aside(checkpointer: Checkpointer, step: int) -> pathlib.Path:
    """Renames step folder `step` to `<step>.damaged-<UTC time>`; returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = checkpointer.directory / f"{step}{DAMAGED_INFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = checkpointer.directory / f"{step}{DAMAGED_INFIX}{stamp}-{suffix}"
    os.rename(checkpointer.step_path(step), target)
    return target


def newest_intact(checkpointer: Checkpointer, *, steps: list[int] | None = None
                  ) -> tuple[int | None, list[SkippedStep]]:
    """The newest step that passes `Checkpointer.check`, and the newer ones that did not.

    Reads only; logs one warning per skipped step.
    """
    skipped = []
    for step in reversed(checkpointer.all_steps() if steps is None else steps):
        damage = checkpointer.check(step)
        if damage is None:
            for skip in skipped:
                log.warning("checkpoint step %d cannot be restored: %s. Using step %d instead; "
                            "step %d was left in place (reading never moves files).",
                            skip.step, skip.damage, step, skip.step)
            return step, skipped
        skipped.append(SkippedStep(step, damage))
    return None, skipped


def restore_newest(checkpointer: Checkpointer, target: State, *,
                   check_meta: Callable[[dict[str, Any]], None],
                   move_damaged: bool) -> Restored[State] | None:
    """Restores the newest step that restores; None when there is no checkpoint at all.

    Args:
      checkpointer: The run's checkpointer.
      target: The abstract state (shapes and shardings) to restore into.
      check_meta: Raises `UserError` when a step's metadata does not fit this
        run (a vocabulary change): that stops the resume, it is no damage.
      move_damaged: Rename skipped steps aside (a training run: every host passes
        True, the chief renames).

    Raises:
      UserError: checkpoints exist but none restores (nothing is moved then),
        or `check_meta` refused the newest intact step.
    """
    skipped: list[SkippedStep] = []
    for step in reversed(checkpointer.all_steps()):
        damage = checkpointer.check(step) if jax.process_index() == 0 else None
        if _chief_decides(damage is None):
            check_meta(checkpointer.read_meta(step))
            try:
                state = checkpointer.restore(step, target)
            except DamagedCheckpoint as error:
                if jax.process_count() > 1:  # The hosts cannot agree on a next step.
                    raise
                damage = error.damage
            else:
                moved = _set_aside(checkpointer, skipped, step, move_damaged)
                return Restored(step, state, tuple(moved))
        skipped.append(SkippedStep(step, damage or Damage(checkpointer.step_path(step),
                                                          "damaged (found by process 0)")))
    if skipped:
        listing = "; ".join(f"step {s.step}: {s.damage}" for s in skipped)
        raise UserError(
            f"none of the checkpoints in {checkpointer.directory} restores ({listing}). Nothing "
            "was moved. Rename the checkpoints/ folder to start over from step 0, or restore "
            "the files from a copy.")
    return None


def _set_aside(checkpointer: Checkpointer, skipped: list[SkippedStep], resumed: int,
               move: bool) -> list[SkippedStep]:
    """Moves the skipped steps aside (the chief, once all hosts agreed), one warning each."""
    if jax.process_index() != 0:
        if skipped and move:
            _sync_hosts("llmos_damaged_checkpoints_moved")
            checkpointer.reload()
        return list(skipped)
    moved = []
    for skip in skipped:
        moved_to = move_aside(checkpointer, skip.step) if move else None
        done = (f"Moved it aside to {moved_to} (nothing was deleted)" if moved_to
                else f"Left step {skip.step} in place")
        log.warning("checkpoint step %d cannot be restored: %s. %s; resuming from step %d.",
                    skip.step, skip.damage, done, resumed)
        moved.append(dataclasses.replace(skip, moved_to=moved_to))
    if skipped and move:
        _sync_hosts("llmos_damaged_checkpoints_moved")
        checkpointer.reload()
    return moved
