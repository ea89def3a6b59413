"""Orbax checkpoints of the TrainState, with the data position and run metadata.

Each step folder `checkpoints/<step>/` holds two Orbax items: `state` (step,
params, optimizer state; sharded arrays written by every host) and `meta`
(JSON: the data position, the model config, the vocabulary), plus
`SHA256SUMS.json` (`manifest`). Saves are asynchronous; restores reshard onto
whatever mesh the restoring run uses. Before restoring, parameter shapes are
compared with the checkpoint so a mismatch is named instead of failing deep
inside Orbax, and nothing on disk is touched.

A save goes through these stages (`SAVE_STAGES`; `on_save_stage` is called at
each, so tests can pause or kill a run there):

1. `start`: nothing of the step is on disk yet;
2. `written`: Orbax has written every file into `<step>.orbax-checkpoint-tmp`
   (async saves only); their checksums are written there next, before the
   commit, so a committed step always has them;
3. `committed`: Orbax renamed the folder to `<step>`: the step restores;
4. `checksummed`: the two files Orbax wrote at the commit are checksummed too:
   the step is complete and verified;
5. `rotating`: only now are steps beyond the newest `keep` removed (each is
   first renamed to `<step>.deleting`, so a half-deleted folder is never taken
   for a checkpoint);
6. `done`.

A synchronous save has no `written` stage: its checksums are written after the
commit, and a step committed without them (its metadata says they were due)
counts as an interrupted save.

A failed save (disk full, permission lost) raises `CheckpointSaveFailed` at
the next save, `wait` or `close`, naming the step and the last good one,
which is kept. Finding the newest checkpoint that restores, and moving
damaged ones aside, is `fallback`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import threading
from typing import Any, Callable, Mapping, Protocol, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from llmos_jax.checkpoints.exports import export_params, load_exported_params  # noqa: F401
from llmos_jax.checkpoints.manifest import (MANIFEST_NAME, Damage, check_manifest,
                                            complete_manifest, has_manifest, is_complete,
                                            read_manifest, write_manifest)
from llmos_jax.errors import UserError
from llmos_jax.models.param_paths import path_name

log = logging.getLogger("llmos_jax.checkpoints")

STATE_ITEM = "state"
META_ITEM = "meta"
SAVE_STAGES = ("start", "written", "committed", "checksummed", "rotating", "done")
# In each step's Orbax metadata: this step was saved with checksums, so a step
# without them is an interrupted save, not one written before checksums existed.
_CHECKSUMS_KEY = "llmos_checksums"
_STEP_NAME = re.compile(r"^(0|[1-9]\d*)$")  # Orbax's standard step names.
# What Orbax writes into a step folder as it commits it (after our first checksums),
# and the suffix of the folder it writes a step into before that.
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
_COMMIT_MARKER = "commit_success.txt"
_ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"
DELETING_SUFFIX = ".deleting"

SaveStageCallback = Callable[[str, int], None]


class SavedState(Protocol):
    """What a checkpoint holds (the trainer's `TrainState`): step, params and optimizer state."""

    @property
    def params(self) -> Any: ...

    def as_dict(self) -> dict[str, Any]: ...


State = TypeVar("State", bound=SavedState)


class CheckpointSaveFailed(UserError):
    """A checkpoint could not be written; the run stops and earlier checkpoints are kept."""


class DamagedCheckpoint(UserError):
    """A checkpoint step whose files cannot be restored.

    Attributes:
      step: The step.
      damage: The file at fault and what is wrong with it.
    """

    def __init__(self, step: int, damage: Damage):
        super().__init__(f"checkpoint step {step} cannot be restored: {damage}")
        self.step, self.damage = step, damage


def check_writable(model_dir: str | os.PathLike) -> pathlib.Path:
    """Creates `model_dir` if needed and proves we can write to it."""
    path = pathlib.Path(model_dir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".llmos_write_probe.{os.getpid()}"  # One per host of a multi-host run.
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"model_dir {str(path)!r} is not writable ({err.strerror}). "
            "Pass a directory you can write to with --model_dir.") from None
    return path



def _flatten_shapes(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, Mapping))[0]
    return {path_name(p): tuple(leaf.shape) for p, leaf in leaves if hasattr(leaf, "shape")}


def first_shape_mismatch(saved: Mapping[str, tuple[int, ...]],
                         expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """A sentence naming the first parameter whose presence or shape differs, or None."""
    for name in sorted(set(saved) | set(expected)):
        if name not in saved:
            return f"parameter {name!r} (shape {expected[name]}) is not in the checkpoint"
        if name not in expected:
            return f"checkpoint parameter {name!r} (shape {saved[name]}) is not in the model"
        if tuple(saved[name]) != tuple(expected[name]):
            return (f"parameter {name!r} has shape {tuple(saved[name])} in the checkpoint "
                    f"but {tuple(expected[name])} in the model")
    return None


def committed_steps(directory: pathlib.Path) -> list[int]:
    """The step folders Orbax has committed under `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if _STEP_NAME.match(p.name) and p.is_dir())


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:1000]}" if text else type(error).__name__


class Checkpointer:
    """Asynchronous, checksummed, rotating checkpoints in `<model_dir>/checkpoints`.

    Args:
      model_dir: The run directory.
      save_every: Save when `step % save_every == 0` (plus forced saves).
      keep: How many recent checkpoints to keep (older ones are removed once a
        newer one is complete and checksummed).
      async_save: Write in a background thread while training continues.
      read_only: Only read (eval, infer): nothing is created, written or moved.
      on_save_stage: Called with (stage, step) at each of `SAVE_STAGES`.
    """

    def __init__(self, model_dir: str | os.PathLike, *, save_every: int, keep: int = 3,
                 async_save: bool = True, read_only: bool = False,
                 on_save_stage: SaveStageCallback | None = None):
        if save_every <= 0:
            raise UserError(f"checkpoint_every must be positive, got {save_every}.")
        if keep <= 0:
            raise UserError(f"keep_checkpoints must be positive, got {keep}.")
        self.directory = pathlib.Path(model_dir).absolute() / "checkpoints"
        self.save_every, self.keep, self._async = save_every, keep, async_save and not read_only
        self._on_save_stage = on_save_stage
        self._saving_step: int | None = None
        self._sealer: threading.Thread | None = None
        self._failure: CheckpointSaveFailed | None = None
        self._reported_failure = False
        self._chief = jax.process_index() == 0
        # Rotation is ours (after checksums), so Orbax keeps every step it writes.
        # Readers pass create=False and never save (Orbax's own read_only mode logs
        # warnings into every `llmos eval`).
        self._read_only = read_only
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1, max_to_keep=None, create=not read_only,
            # Steps are listed and checked here (`check`); Orbax reading every step's
            # metadata up front only logs errors about the damaged ones.
            lightweight_initialize=True,
            enable_async_checkpointing=self._async,
            async_options=(ocp.AsyncOptions(post_finalization_callback=self._written,
                                            create_directories_asynchronously=False)
                           if self._async else None))
        # Handlers, not just item names: a fresh process (a resume) must be able to
        # read the state's metadata before any save or restore has told Orbax its type.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                           META_ITEM: ocp.JsonCheckpointHandler()})

    # --- Reading. ---

    def step_path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        return committed_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            META_ITEM: ocp.args.JsonRestore()}))
        return dict(restored[META_ITEM])

    def saved_param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        metadata = self._manager.item_metadata(step)[STATE_ITEM]
        tree = getattr(metadata, "tree", metadata)
        return _flatten_shapes(tree["params"])

    def check(self, step: int) -> Damage | None:
        """What makes `step` unrestorable, as far as can be told without restoring it.

        A step with checksums is checked file by file. A step without them is
        either an interrupted save (its metadata says checksums were due) or was
        written before checksums existed; then its metadata must at least read.
        """
        path = self.step_path(step)
        if not path.is_dir():
            return Damage(path, "missing")
        if has_manifest(path):
            damage = check_manifest(path)
            if damage is not None or is_complete(path):
                return damage
            # Killed after Orbax's commit, before its own two files were checksummed:
            # the data is verified; those two must at least be there and read.
            if not (path / _COMMIT_MARKER).is_file():
                return Damage(path / _COMMIT_MARKER, "missing (Orbax's commit marker)")
            try:
                self._manager.metadata(step)
            except Exception as error:
                return Damage(path / _STEP_METADATA_FILE, f"unreadable ({_describe(error)})")
            return None
        try:
            custom = self._manager.metadata(step).custom_metadata or {}
        except Exception as error:  # Orbax raises many types for unreadable files.
            return Damage(path, f"its Orbax step metadata is unreadable ({_describe(error)})")
        if custom.get(_CHECKSUMS_KEY):
            return Damage(path / MANIFEST_NAME, "missing: the save of this step was interrupted "
                                                "after Orbax committed it, before its checksums "
                                                "were written")
        for item, read in ((META_ITEM, self.read_meta), (STATE_ITEM, self.saved_param_shapes)):
            try:
                read(step)
            except Exception as error:
                return Damage(path / item, f"unreadable ({_describe(error)})")
        return None

    def restore(self, step: int, target: State) -> State:
        """Restores into `target`'s shapes and shardings (any mesh).

        Raises:
          UserError: the checkpoint's parameters do not fit `target`.
          DamagedCheckpoint: a step without checksums whose files Orbax cannot
            read (a checksummed step that Orbax cannot read raises Orbax's error:
            its files are as saved, so the fault is elsewhere).
        """
        mismatch = first_shape_mismatch(self.saved_param_shapes(step),
                                        _flatten_shapes(target.params))
        if mismatch:
            raise UserError(
                f"cannot restore checkpoint step {step} from {self.directory}: {mismatch}. "
                "The model config differs from the one that wrote it; use the original "
                "model gin file or a new --model_dir. The checkpoint was left untouched.")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardRestore(target.as_dict())}))[STATE_ITEM]
        except Exception as error:
            if has_manifest(self.step_path(step)):
                raise
            raise DamagedCheckpoint(step, Damage(self.step_path(step) / STATE_ITEM,
                                                 f"unreadable ({_describe(error)})")) from error
        return type(target)(**restored)

    # --- Writing. ---

    def save(self, step: int, state: SavedState, meta: Mapping[str, Any]) -> None:
        """Starts an (async) save of `state` and `meta` at `step`; skips existing steps.

        Raises:
          CheckpointSaveFailed: this save, or the previous one, failed.
        """
        if self._read_only:
            raise ValueError(f"{self.directory} was opened read-only")
        self._finish_sealing()
        if step in self.all_steps():
            return
        self._stage("start", step)
        self._saving_step = step
        try:
            self._manager.save(step, args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardSave(state.as_dict()),
                META_ITEM: ocp.args.JsonSave(dict(meta)),
            }), force=True, custom_metadata={_CHECKSUMS_KEY: MANIFEST_NAME})
        except Exception as error:
            raise self._save_failed(step, error) from error
        if self._async:
            self._sealer = threading.Thread(target=self._seal_in_background, args=(step,),
                                            name=f"llmos-checkpoint-{step}", daemon=True)
            self._sealer.start()
        else:
            try:
                self._seal(step)
            except Exception as error:
                raise self._save_failed(step, error) from error

    def wait(self) -> None:
        """Blocks until any in-flight save is on disk and checksummed.

        Raises:
          CheckpointSaveFailed: that save failed.
        """
        self._finish_sealing()

    def close(self) -> None:
        try:
            self._finish_sealing()
        finally:
            try:
                self._manager.close()
            except Exception:
                if not self._reported_failure:  # Orbax re-raises a failed save's error.
                    raise

    def reload(self) -> None:
        """Rereads the step list after step folders were moved outside Orbax."""
        self._manager.reload()

    def _stage(self, stage: str, step: int) -> None:
        if self._on_save_stage is not None:
            self._on_save_stage(stage, step)

    def _written(self) -> None:
        """Orbax's post-finalization callback: every item file is in the temporary folder.

        Their checksums go in now, before Orbax renames the folder to `<step>`,
        so a committed step always has them.
        """
        step = self._saving_step
        if step is None:
            return
        self._stage("written", step)
        if self._chief:
            temporary = sorted(self.directory.glob(f"{step}{_ORBAX_TMP_SUFFIX}*"))
            if len(temporary) != 1:
                raise FileNotFoundError(2, "no single folder Orbax is writing the step into",
                                        str(self.directory / f"{step}{_ORBAX_TMP_SUFFIX}"))
            write_manifest(temporary[0], exclude=(_STEP_METADATA_FILE,), complete=False)

    def _seal_in_background(self, step: int) -> None:
        try:
            self._seal(step)
        except Exception as error:  # Raised in the training thread by `_finish_sealing`.
            self._failure = self._save_failed(step, error)
            self._failure.__cause__ = error

    def _seal(self, step: int) -> None:
        """Waits for Orbax's commit, writes the checksums, then (only then) rotates."""
        self._manager.wait_until_finished()
        path = self.step_path(step)
        if not path.is_dir():
            raise FileNotFoundError(2, "Orbax finished without committing the step", str(path))
        self._stage("committed", step)
        if self._chief:
            if has_manifest(path):  # Written before the commit (async saves).
                complete_manifest(path)
            else:
                write_manifest(path)
            if not isinstance(read_manifest(path), dict):
                raise OSError(5, "the checksums did not read back", str(path / MANIFEST_NAME))
        self._stage("checksummed", step)
        if self._chief:
            self._rotate(step)
        self._stage("done", step)

    def _rotate(self, newest: int) -> None:
        """Removes steps beyond the newest `keep`, renaming each away first."""
        for leftover in self.directory.glob(f"*{DELETING_SUFFIX}"):
            shutil.rmtree(leftover, ignore_errors=True)  # A rotation a crash interrupted.
        steps = [s for s in self.all_steps() if s <= newest]
        doomed = steps[:-self.keep]
        for index, step in enumerate(doomed):
            away = self.directory / f"{step}{DELETING_SUFFIX}"
            os.rename(self.step_path(step), away)
            if index == 0:
                self._stage("rotating", newest)
            shutil.rmtree(away)
        if doomed:
            self._manager.reload()

    def _finish_sealing(self) -> None:
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._reported_failure = True
            raise failure

    def _save_failed(self, step: int, error: BaseException) -> CheckpointSaveFailed:
        self._reported_failure = True
        earlier = [s for s in self.all_steps() if s < step and self._looks_intact(s)]
        if earlier:
            kept = (f"the last good checkpoint, step {earlier[-1]} "
                    f"({self.step_path(earlier[-1])}), is kept")
            resume = f"resume from step {earlier[-1]}"
        else:
            kept, resume = "no earlier checkpoint exists", "start again"
        return CheckpointSaveFailed(
            f"checkpoint step {step} could not be saved in {self.directory}: "
            f"{_describe(error)}. The run stopped; {kept}. Free disk space or restore write "
            f"access to {self.directory}, then rerun the same command to {resume}.")

    def _looks_intact(self, step: int) -> bool:
        """Whether `step`'s files have the sizes its checksums recorded (no hashing)."""
        path = self.step_path(step)
        files = read_manifest(path)
        if isinstance(files, Damage):
            return not (path / MANIFEST_NAME).exists()  # Saved before checksums existed.
        return all((path / name).is_file() and (path / name).stat().st_size == recorded["bytes"]
                   for name, recorded in files.items())


def numpy_tree(tree):
    """Host copies of a (possibly sharded) tree, for comparisons in tests and tools."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
