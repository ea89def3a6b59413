"""The training state, and where each of its arrays lives on the mesh.

Parameters are kept as a plain nested dict (NNX "pure dict") next to the
model's graph definition, so optax, Orbax and jit see ordinary pytrees. Their
shardings come from the logical axes each parameter was created with and the
rule table; optimizer-state shardings follow the parameter each moment
belongs to.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmos_jax.objectives.model_building import ModelSpec, Params, param_shardings
from llmos_jax.partitioning.rules import AxisRules


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """What a training step reads and writes; everything in it is checkpointed."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


def _moment_sharding(mesh: Mesh):
    replicated = NamedSharding(mesh, PartitionSpec())

    def for_leaf(leaf, param, param_sharding):
        if leaf.shape == param.shape:
            return param_sharding
        # Factored moments (Adafactor) drop or shrink dimensions: keep the mesh
        # axes of dimensions that survive unchanged, replicate the rest.
        if len(leaf.shape) == len(param.shape):
            spec = tuple(param_sharding.spec) + (None,) * (len(param.shape) - len(param_sharding.spec))
            kept = [axis if leaf.shape[i] == param.shape[i] else None for i, axis in enumerate(spec)]
            return NamedSharding(mesh, PartitionSpec(*kept))
        return replicated

    return for_leaf, replicated


def state_shardings(spec: ModelSpec, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: AxisRules) -> TrainState:
    """Shardings for every array of the TrainState."""
    p_shardings = param_shardings(spec, mesh, rules)
    abstract_opt = jax.eval_shape(tx.init, spec.abstract_params)
    for_leaf, replicated = _moment_sharding(mesh)
    opt_shardings = optax.tree_map_params(
        tx, for_leaf, abstract_opt, spec.abstract_params, p_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings)


def abstract_train_state(spec: ModelSpec, tx: optax.GradientTransformation,
                         shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target for a checkpoint."""
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=spec.abstract_params,
                        opt_state=jax.eval_shape(tx.init, spec.abstract_params))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def init_train_state(spec: ModelSpec, tx: optax.GradientTransformation,
                     shardings: TrainState) -> TrainState:
    """Initialises parameters and optimizer state directly in their shards."""

    def init() -> TrainState:
        params = spec.init_params()
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(init, out_shardings=shardings)()
