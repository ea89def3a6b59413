"""Loading a Hugging Face checkpoint onto devices one tensor at a time.

Reading every tensor into host memory, converting the whole table and then
copying it to the devices holds two or three full copies of the model on the
host at the peak: for billions of parameters, the difference between loading
and running out of memory. Here each conversion step (one rule of the
family's `MappingTable`, for one layer) reads only the tensors it needs from
their safetensors shard, converts them, casts them to the parameter's dtype
and places the result straight onto the parameter's target sharding. A
parameter stacked over layers (``scan_layers=True``) is allocated on the
devices first and filled layer by layer, so the host never holds more than
one layer of it. Steps run in shard order, and the shard is opened and closed
around each read, so the memory-mapped pages a read touched leave the process
at once.

The extra host memory is about the largest single tensor (plus its converted
copy); the placed model itself is the only full copy (on CPU its "device"
memory is host memory).
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding
from safetensors import safe_open

from llmos_jax.convert import hf_checkpoint
from llmos_jax.convert.model_params import param_specs
from llmos_jax.convert.tensor_mapping import MappingTable, ParamPath, unflatten_params
from llmos_jax.errors import UserError
from llmos_jax.models.axes import logical_axes_of
from llmos_jax.partitioning import Layout

ShardingOf = Callable[[ParamPath], Sharding]


def layout_shardings(abstract: nnx.Module, layout: Layout | None) -> ShardingOf:
    """Each parameter's target: its logical axes laid on `layout`'s mesh, or the default device."""
    if layout is None:
        default = SingleDeviceSharding(jax.devices()[0])
        return lambda path: default
    state = nnx.state(abstract, nnx.Param)
    flat = {tuple(path): (logical_axes_of(variable), variable.get_value().shape)
            for path, variable in nnx.to_flat_state(state)}
    return lambda path: layout.sharding(*flat[path])


def stream_into(abstract: nnx.Module, table: MappingTable, directory: str | os.PathLike,
                shardings: ShardingOf) -> nnx.Module:
    """`abstract` filled with the checkpoint in `directory`, converted by `table`, streamed.

    Args:
      abstract: The target model's structure (``nnx.eval_shape``); fixes each
        parameter's shape and dtype.
      table: The family's tensor table for the model's config.
      directory: A Hugging Face model folder (one ``model.safetensors`` or
        shards with ``model.safetensors.index.json``).
      shardings: Each parameter's target sharding, by path.

    Raises:
      UserError: a missing, unexpected or wrong-shape tensor (checked from
        the file headers before any tensor is read).
    """
    files = hf_checkpoint.tensor_files(directory)
    source = _source(pathlib.Path(directory))
    specs = param_specs(abstract)
    reader = _ShardReader(files)
    table.check_hf_shapes(reader.shapes(), source)
    table.check_model_paths(set(specs))
    steps = sorted(table.placements(), key=lambda step: min(map(reader.order, step[0])))
    params: dict[ParamPath, jax.Array] = {}
    for keys, rule, targets in steps:
        outputs = rule.to_ours(*(reader.read(key) for key in keys))
        for (path, layer), array in zip(targets, outputs, strict=True):
            shape, dtype = specs[path]
            wanted = shape if layer is None else shape[1:]
            if tuple(array.shape) != tuple(wanted):
                raise UserError(
                    f"{table.family} tensor(s) {', '.join(keys)} in {source} convert to shape "
                    f"{tuple(array.shape)}, but the model's parameter {_format(path)} needs "
                    f"{tuple(wanted)}; do not override shape fields when importing.")
            params[path] = _place(params.get(path), np.asarray(array, dtype=dtype), shape,
                                  layer, shardings(path))
        del outputs, array
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    nnx.replace_by_pure_dict(state, unflatten_params(params))
    return nnx.merge(graphdef, state, rest)


def _place(stacked: jax.Array | None, value: np.ndarray, shape: tuple[int, ...],
           layer: int | None, sharding: Sharding) -> jax.Array:
    """`value` on its sharding: the whole parameter, or layer `layer` of a stacked one."""
    if layer is None:
        return jax.device_put(value, sharding)
    if stacked is None:
        stacked = jnp.zeros(shape, value.dtype, device=sharding)  # allocated on the devices
    return _set_layer(sharding)(stacked, jax.device_put(value, _without_layer_axis(sharding)),
                                layer)


@functools.lru_cache(maxsize=None)
def _set_layer(sharding: Sharding) -> Callable[[jax.Array, jax.Array, int], jax.Array]:
    """A compiled in-place ``stacked[layer] = value`` (the stacked buffer is donated)."""
    return jax.jit(lambda stacked, value, layer: jax.lax.dynamic_update_index_in_dim(
        stacked, value.astype(stacked.dtype), layer, axis=0),
        out_shardings=sharding, donate_argnums=0)




def _without_layer_axis(sharding: Sharding) -> Sharding:
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    return sharding


class _ShardReader:
    """Reads one tensor at a time from its shard.

    Each read opens the shard, copies the tensor out and closes it again:
    safetensors memory-maps the file, and the pages a read touched count as
    this process's memory for as long as the map stays open.
    """

    def __init__(self, files: dict[str, pathlib.Path]) -> None:
        self._files = files
        self._shard_order = {path: i for i, path in enumerate(sorted(set(files.values())))}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, from the shard headers."""
        shapes = {}
        for path in self._shard_order:
            with safe_open(str(path), framework="numpy") as file:
                for name in file.keys():
                    if self._files.get(name) == path:
                        shapes[name] = tuple(file.get_slice(name).get_shape())
        missing = sorted(set(self._files) - set(shapes))
        if missing:
            raise UserError(f"tensor {missing[0]!r} is listed in the safetensors index but "
                            f"not in {self._files[missing[0]]}; copy the checkpoint again.")
        return shapes

    def order(self, name: str) -> int:
        """The position of the tensor's shard: steps run shard by shard."""
        return self._shard_order[self._files[name]]

    def read(self, name: str) -> np.ndarray:
        with safe_open(str(self._files[name]), framework="numpy") as file:
            return file.get_tensor(name)


def _source(directory: pathlib.Path) -> str:
    index = directory / hf_checkpoint.WEIGHTS_INDEX_FILE
    return str(index if index.exists() else directory / hf_checkpoint.WEIGHTS_FILE)


def _format(path: ParamPath) -> str:
    return "/".join(str(part) for part in path)
