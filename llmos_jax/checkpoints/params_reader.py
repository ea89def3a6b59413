"""Reading parameters alone, onto the host or into a model's shardings.

Warm starts, `llmos eval` and `llmos infer` need a run's weights without its
optimizer state: from its latest checkpoint (the `params` of its Orbax state)
or from a params-only export.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from llmos_jax.checkpoints.checkpointer import first_shape_mismatch
from llmos_jax.checkpoints.locations import CheckpointLocation
from llmos_jax.errors import UserError


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def flat_params(tree) -> dict[str, Any]:
    """'/'-joined path -> leaf."""
    return {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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


def read_our_params(location: str) -> dict[str, np.ndarray]:
    """Parameters of one of our runs (latest checkpoint) or of a params-only export."""
    path = pathlib.Path(location).expanduser().absolute()
    if (path / "params").is_dir():  # export_params
        return _restore_params_on_host(path / "params", None)
    checkpoints = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    if not steps:
        raise UserError(f"InitFrom.checkpoint={location!r} holds no checkpoint or export; give a "
                        "model_dir that has checkpoints/, or an export folder with params/.")
    return _restore_params_on_host(checkpoints / str(steps[-1]) / "state", "params")


def restore_params(location: CheckpointLocation, spec, shardings, *, checkpoint: str):
    """The checkpoint's parameters in the model's tree structure, placed with `shardings`."""
    saved = read_our_params(str(location.path))
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
