"""Orbax checkpoints of the TrainState, with the data position and run metadata.

Each step directory holds two items: `state` (step, params, optimizer state;
sharded arrays written by every host) and `meta` (JSON: the data position, the
model config, the vocabulary). Saves are asynchronous; restores reshard onto
whatever mesh the restoring run uses. Before restoring, parameter shapes are
compared with the checkpoint so a mismatch is named instead of failing deep
inside Orbax, and nothing on disk is touched.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Protocol, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from llmos_jax.errors import UserError

STATE_ITEM = "state"
META_ITEM = "meta"


class SavedState(Protocol):
    """What a checkpoint holds (the trainer's `TrainState`): step, params and optimizer state."""

    @property
    def params(self) -> Any: ...

    def as_dict(self) -> dict[str, Any]: ...


State = TypeVar("State", bound=SavedState)


def check_writable(model_dir: str | os.PathLike) -> pathlib.Path:
    """Creates `model_dir` if needed and proves we can write to it."""
    path = pathlib.Path(model_dir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".llmos_write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"model_dir {str(path)!r} is not writable ({err.strerror}). "
            "Pass a directory you can write to with --model_dir.") from None
    return path


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _flatten_shapes(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, Mapping))[0]
    return {_path_str(p): tuple(leaf.shape) for p, leaf in leaves if hasattr(leaf, "shape")}


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


class Checkpointer:
    """Asynchronous, rotating checkpoints in `<model_dir>/checkpoints`.

    Args:
      model_dir: The run directory.
      save_every: Save when `step % save_every == 0` (plus forced saves).
      keep: How many recent checkpoints to keep.
      async_save: Write in a background thread while training continues.
    """

    def __init__(self, model_dir: str | os.PathLike, *, save_every: int, keep: int = 3,
                 async_save: bool = True):
        if save_every <= 0:
            raise UserError(f"checkpoint_every must be positive, got {save_every}.")
        self.directory = pathlib.Path(model_dir).absolute() / "checkpoints"
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1, max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save)
        # Handlers, not just item names: a fresh process (a resume) must be able to
        # read the state's metadata before any save or restore has told Orbax its type.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                           META_ITEM: ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: SavedState, meta: Mapping[str, Any]) -> None:
        """Starts an (async) save of `state` and `meta` at `step`; skips existing steps."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state.as_dict()),
            META_ITEM: ocp.args.JsonSave(dict(meta)),
        }), force=True)

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            META_ITEM: ocp.args.JsonRestore()}))
        return dict(restored[META_ITEM])

    def saved_param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        metadata = self._manager.item_metadata(step)[STATE_ITEM]
        tree = getattr(metadata, "tree", metadata)
        return _flatten_shapes(tree["params"])

    def restore(self, step: int, target: State) -> State:
        """Restores into `target`'s shapes and shardings (any mesh)."""
        mismatch = first_shape_mismatch(self.saved_param_shapes(step),
                                        _flatten_shapes(target.params))
        if mismatch:
            raise UserError(
                f"cannot restore checkpoint step {step} from {self.directory}: {mismatch}. "
                "The model config differs from the one that wrote it; use the original "
                "model gin file or a new --model_dir. The checkpoint was left untouched.")
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(target.as_dict())}))[STATE_ITEM]
        return type(target)(**restored)

    def wait(self) -> None:
        """Blocks until any in-flight asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def export_params(directory: str | os.PathLike, params, meta: Mapping[str, Any], *,
                  extra_files: Mapping[str, bytes] | None = None) -> pathlib.Path:
    """Writes parameters alone (no optimizer state) for inference, plus their metadata.

    Args:
      directory: The export folder.
      params: The parameters.
      meta: Written as `meta.json`.
      extra_files: Relative path -> contents, written beside them (the vocabulary
        files and model card that make an export self-contained).
    """
    path = pathlib.Path(directory).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / "params", params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        (path / "meta.json").write_text(json.dumps(dict(meta), indent=2, sort_keys=True))
        for name, contents in (extra_files or {}).items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents)
    return path


def load_exported_params(directory: str | os.PathLike, target=None):
    """Reads an export written by `export_params`; `target` gives shardings if wanted."""
    path = pathlib.Path(directory).absolute()
    if not (path / "params").exists():
        raise UserError(f"no exported params at {path}/params; export with `llmos train` first.")
    checkpointer = ocp.StandardCheckpointer()
    if target is None:
        return checkpointer.restore(path / "params")
    return checkpointer.restore(path / "params", target)


def numpy_tree(tree):
    """Host copies of a (possibly sharded) tree, for comparisons in tests and tools."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
