"""Builds a model sharded on an 8-device mesh, with the same weights as an unsharded one."""

import jax
from flax import nnx
from jax.sharding import NamedSharding

from llmos_jax.models.axes import logical_axes_of
from llmos_jax.partitioning import (DEFAULT_RULES, LogicalSharder, MeshConfig, build_mesh,
                                    logical_to_mesh_spec)


def sharded_copy(make_model, reference: nnx.Module):
    """`make_model(shard)` on a data=2, fsdp=2, tensor=2 mesh holding `reference`'s weights."""
    mesh = build_mesh(MeshConfig(2, 2, 2))
    model = make_model(LogicalSharder(mesh, DEFAULT_RULES))
    reference_params = nnx.state(reference, nnx.Param)
    params = nnx.state(model, nnx.Param)

    def place(variable, source):
        spec = logical_to_mesh_spec(logical_axes_of(variable), DEFAULT_RULES, mesh,
                                    variable.get_value().shape)
        return jax.device_put(source.get_value(), NamedSharding(mesh, spec))

    placed = jax.tree.map(place, params, reference_params,
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
    nnx.update(model, placed)
    return model, mesh
