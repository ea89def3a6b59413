"""Reading parameters alone, onto the host or into a model's shardings.

Warm starts, `llmos eval` and `llmos infer` need a run's weights without its
optimizer state: from the checkpoint `find_checkpoint` chose (the `params` of
its Orbax state) or from a params-only export, both verified first.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from llmos_jax.checkpoints.checkpointer import committed_steps, first_shape_mismatch
from llmos_jax.checkpoints.locations import CheckpointLocation, find_checkpoint
from llmos_jax.errors import UserError
from llmos_jax.models.param_paths import path_name



def flat_params(tree) -> dict[str, Any]:
    """'/'-joined path -> leaf."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _host_target(metadata_tree) -> Any:
    cpu = SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu),
                        metadata_tree)


def _restore_params_on_host(item_dir: pathlib.Path, key: str | None) -> dict[str, np.ndarray]:
    """Restores `params` (or the whole tree when `key` is None) of an Orbax item onto host memory."""
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    metadata = checkpointer.metadata(item_dir)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree",
                   getattr(metadata, "item_metadata", metadata))
    target = _host_target(tree[key] if key else tree)
    target = {key: target} if key else target
    restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=bool(key)))
    params = restored[key] if key else restored
    return {name: np.asarray(value) for name, value in flat_params(params).items()}


def read_location(location: CheckpointLocation) -> dict[str, np.ndarray]:
    """The parameters `find_checkpoint` located, on the host.

    Raises:
      UserError: Orbax cannot read them (a step written before checkpoints had
        checksums, whose files are damaged); nothing is changed on disk.
    """
    try:
        return _restore_params_on_host(location.params_item, location.params_key)
    except Exception as error:
        raise UserError(f"cannot read the parameters in {location.params_item} (step "
                        f"{location.step}): {type(error).__name__}: {str(error)[:300]}. Nothing "
                        "was changed; give another step or export.") from error


def read_our_params(location: str) -> dict[str, np.ndarray]:
    """Parameters of one of our runs (newest intact checkpoint, a step) or of an export."""
    path = pathlib.Path(location).expanduser().absolute()
    if not path.is_dir() or not ((path / "params").is_dir() or path.name.isdigit()
                                 or committed_steps(path / "checkpoints")
                                 or committed_steps(path)):
        raise UserError(f"InitFrom.checkpoint={location!r} holds no checkpoint or export; give a "
                        "model_dir that has checkpoints/, or an export folder with params/.")
    return read_location(find_checkpoint(location, flag="InitFrom.checkpoint"))


def restore_params(location: CheckpointLocation, spec, shardings, *, checkpoint: str):
    """The checkpoint's parameters in the model's tree structure, placed with `shardings`."""
    saved = read_location(location)
    expected = flat_params(spec.abstract_params)
    mismatch = first_shape_mismatch({k: v.shape for k, v in saved.items()},
                                    {k: v.shape for k, v in expected.items()})
    if mismatch:
        raise UserError(f"--checkpoint={checkpoint!r} does not fit the gin file's model: "
                        f"{mismatch}. Pass the gin file the run was trained with (its "
                        "model_dir/config.gin).")
    placed = [jax.device_put(saved[name].astype(abstract.dtype), sharding)
              for (name, abstract), sharding in zip(expected.items(),
                                                    flat_params(shardings).values())]
    return jax.tree.unflatten(jax.tree.structure(spec.abstract_params), placed)
