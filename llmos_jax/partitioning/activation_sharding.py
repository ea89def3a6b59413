"""Constrains activations to the layout the rules give their logical axes."""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh, NamedSharding

from llmos_jax.partitioning.rules import AxisRules, logical_to_mesh_spec


@dataclasses.dataclass(frozen=True)
class LogicalSharder:
    """An `ActivationSharder` for `DecoderLM(shard=...)`.

    Frozen and hashable, so it can live in an NNX graph definition.
    """

    mesh: Mesh
    rules: AxisRules

    def __call__(self, x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
        spec = logical_to_mesh_spec(logical_axes, self.rules, self.mesh, x.shape)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))
