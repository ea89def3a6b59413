"""Device meshes, logical-axis sharding rules, and the `Layout` that bundles them."""

from llmos_jax.partitioning.activation_sharding import LogicalSharder
from llmos_jax.partitioning.layout import Layout
from llmos_jax.partitioning.mesh import (MESH_AXES, MeshConfig, build_mesh,
                                         check_global_batch_size, data_parallel_size)
from llmos_jax.partitioning.rules import (DEFAULT_RULES, AxisRules, logical_to_mesh_spec,
                                          rules_from_mapping)

__all__ = [
    "Layout", "LogicalSharder", "check_global_batch_size", "MESH_AXES", "MeshConfig",
    "build_mesh", "data_parallel_size", "DEFAULT_RULES", "AxisRules", "logical_to_mesh_spec",
    "rules_from_mapping",
]
