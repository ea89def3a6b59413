"""Device meshes and logical-axis sharding rules."""

from llmos_jax.partitioning.activation_sharding import LogicalSharder
from llmos_jax.partitioning.global_batch import (batch_sharding, check_global_batch_size,
                                                 host_local_to_global)
from llmos_jax.partitioning.mesh import MESH_AXES, MeshConfig, build_mesh, data_parallel_size
from llmos_jax.partitioning.rules import (DEFAULT_RULES, AxisRules, logical_to_mesh_spec,
                                          rules_from_mapping, tree_shardings)

__all__ = [
    "LogicalSharder", "batch_sharding", "check_global_batch_size", "host_local_to_global",
    "MESH_AXES", "MeshConfig", "build_mesh", "data_parallel_size", "DEFAULT_RULES",
    "AxisRules", "logical_to_mesh_spec", "rules_from_mapping", "tree_shardings",
]
