"""`Layout`: a mesh and its logical-axis rules, the one object that places arrays.

Every array of a run is placed by the same two facts, the device mesh and the
rule table that maps logical axis names onto it. They used to travel as a
`(mesh, rules)` pair through the trainer, the step builders and the loaders;
`Layout` bundles them once and answers every placement question a run asks:
parameter shardings (from a model's logical axes), optimizer-state shardings
(each moment follows its parameter), batch shardings, the activation sharder
the model constrains its activations with, and the data-parallel size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmos_jax.partitioning.activation_sharding import LogicalSharder
from llmos_jax.partitioning.mesh import (MeshConfig, build_mesh, check_global_batch_size,
                                         data_parallel_size)
from llmos_jax.partitioning.rules import (DEFAULT_RULES, AxisRules, MeshAxes,
                                          logical_to_mesh_spec, rules_from_mapping)


class LogicallyLabelled(Protocol):
    """A model's parameter tree labelled with logical axes (`ModelSpec` is one)."""

    abstract_params: Any  # ShapeDtypeStructs
    logical_axes: Any     # a tuple of logical names per parameter, same structure


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's arrays live: a mesh and the rules that lay logical axes on it.

    Frozen and hashable, so the activation sharder built from it can live in an
    NNX graph definition.

    Attributes:
      mesh: The device mesh (axes `data`, `fsdp`, `tensor`).
      rules: The ordered logical-to-mesh rule table.
    """

    mesh: Mesh
    rules: AxisRules = DEFAULT_RULES

    @classmethod
    def build(cls, mesh_config: MeshConfig,
              axis_rules: Mapping[str, MeshAxes] | Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES,
              devices: Sequence[jax.Device] | None = None) -> Layout:
        """The layout of `train.mesh_config` and `train.axis_rules` over `devices` (default all)."""
        return cls(build_mesh(mesh_config, devices), rules_from_mapping(axis_rules))

    # --- Whole-run facts. ---------------------------------------------------

    @property
    def data_parallel_size(self) -> int:
        """How many ways a batch is split (data x fsdp)."""
        return data_parallel_size(self.mesh)

    @property
    def replicated(self) -> NamedSharding:
        """A copy on every device (scalars, counters, metrics)."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def activation_sharder(self) -> LogicalSharder:
        """The `shard=` callable models constrain their activations with."""
        return LogicalSharder(self.mesh, self.rules)

    def check_global_batch_size(self, global_batch_size: int, *, name: str) -> None:
        """Fails clearly when `global_batch_size` cannot be split over the data-parallel devices."""
        check_global_batch_size(global_batch_size, self.mesh, name=name)

    # --- Parameters and optimizer state. ------------------------------------

    def sharding(self, logical_axes: Sequence[str | None],
                 shape: Sequence[int] | None = None) -> NamedSharding:
        """The sharding of one array labelled `logical_axes` (of `shape`, when known)."""
        return NamedSharding(self.mesh, logical_to_mesh_spec(logical_axes, self.rules,
                                                             self.mesh, shape))

    def tree_shardings(self, logical_axes_tree, shapes_tree):
        """NamedShardings for a tree of logical-axes tuples and a matching tree of shapes."""
        return jax.tree.map(lambda names, shaped: self.sharding(names, shaped.shape),
                            logical_axes_tree, shapes_tree, is_leaf=_is_axes)

    def param_shardings(self, spec: LogicallyLabelled):
        """Each parameter's sharding: its logical axes laid on the mesh by the rules."""
        return self.tree_shardings(spec.logical_axes, spec.abstract_params)

    def opt_state_shardings(self, tx, abstract_params, param_shardings):
        """Shardings of `tx.init(params)`: each moment follows the parameter it belongs to.

        Factored moments (Adafactor) drop or shrink dimensions: they keep the
        mesh axes of dimensions that survive unchanged and replicate the rest.
        Counters and hyperparameters are replicated.
        """
        import optax  # Only training needs optimizer states.

        replicated = self.replicated

        def for_leaf(leaf, param, param_sharding):
            if isinstance(leaf, optax.MaskedNode):  # a parameter this optimizer skips
                return leaf
            if leaf.shape == param.shape:
                return param_sharding
            if len(leaf.shape) == len(param.shape):
                spec = (tuple(param_sharding.spec)
                        + (None,) * (len(param.shape) - len(param_sharding.spec)))
                kept = [axis if leaf.shape[i] == param.shape[i] else None
                        for i, axis in enumerate(spec)]
                return NamedSharding(self.mesh, PartitionSpec(*kept))
            return replicated

        abstract_opt = jax.eval_shape(tx.init, abstract_params)
        return optax.tree_map_params(
            tx, for_leaf, abstract_opt, abstract_params, param_shardings,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct, optax.MaskedNode)))

    # --- Batches. -----------------------------------------------------------

    def batch_sharding(self, ndim: int = 2) -> NamedSharding:
        """Rows over the data-parallel axes, everything else replicated."""
        return self.sharding(("batch",) + ("length",) * (ndim - 1))

    def batch_shardings(self, ranks: Mapping[str, int] | Sequence[str]) -> dict[str, NamedSharding]:
        """One batch sharding per feature; `ranks` maps each feature to its rank (default 2)."""
        ranks = ranks if isinstance(ranks, Mapping) else dict.fromkeys(ranks, 2)
        return {name: self.batch_sharding(ndim) for name, ndim in ranks.items()}

    def microbatch_sharding(self, ndim: int) -> NamedSharding:
        """`[n, B/n, ...]` microbatches: each one's rows spread like a batch's."""
        spec = self.batch_sharding(ndim - 1).spec
        return NamedSharding(self.mesh, PartitionSpec(None, *spec))

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assembles each host's rows into one global array per feature.

        Every host passes only the rows it read; `jax.make_array_from_process_local_data`
        places them on the host's own devices, so no host ever holds the global
        batch. On a single host this is a plain device_put with the batch sharding.
        """
        out = {}
        for name, local in batch.items():
            global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
            out[name] = jax.make_array_from_process_local_data(
                self.batch_sharding(local.ndim), local, global_shape)
        return out
