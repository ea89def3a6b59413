"""Host-local batches to global arrays, the same way on one host or many."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from llmos_jax.errors import UserError
from llmos_jax.partitioning.mesh import data_parallel_size
from llmos_jax.partitioning.rules import AxisRules, logical_to_mesh_spec


def batch_sharding(mesh: Mesh, rules: AxisRules, ndim: int = 2) -> NamedSharding:
    """Rows over the data-parallel axes, everything else replicated."""
    spec = logical_to_mesh_spec(("batch",) + ("length",) * (ndim - 1), rules, mesh)
    return NamedSharding(mesh, spec)


def check_global_batch_size(global_batch_size: int, mesh: Mesh, *, name: str) -> None:
    """Fails clearly when the batch cannot be split evenly over data-parallel devices."""
    dp = data_parallel_size(mesh)
    if global_batch_size % dp:
        raise UserError(
            f"{name}={global_batch_size} is not divisible by the data-parallel size {dp} "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}). "
            f"Use a multiple of {dp}, or change the mesh.")


def host_local_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
                         rules: AxisRules) -> dict[str, jax.Array]:
    """Assembles each host's rows into one global array per feature.

    Every host passes only the rows it read; `jax.make_array_from_process_local_data`
    places them on the host's own devices, so no host ever holds the global
    batch. On a single host this is a plain device_put with the batch sharding.
    """
    out = {}
    for name, local in batch.items():
        sharding = batch_sharding(mesh, rules, local.ndim)
        global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out
