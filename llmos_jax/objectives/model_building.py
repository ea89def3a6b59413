"""The model a run trains, built from the run's settings: one path for train, eval and infer.

`train` builds its model spec here, and so does
`llmos_jax.cli.run_loading` for `llmos eval` and `llmos infer`, so a
checkpoint is always restored into the very module, parameter tree and
shardings that wrote it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

from llmos_jax.models.axes import logical_axes_of
from llmos_jax.models.config import TransformerConfig
from llmos_jax.objectives.base import Objective
from llmos_jax.objectives.language_modeling import CausalLm
from llmos_jax.partitioning import Layout

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model's structure without its weights: how to rebuild it and lay it out."""

    graphdef: nnx.GraphDef
    abstract_params: Params          # ShapeDtypeStructs
    logical_axes: Params             # tuples of logical names, same structure
    init_params: Callable[[], Params]

    def merge(self, params: Params) -> nnx.Module:
        """The live module for `params` (call inside jit: it is cheap to trace)."""
        return nnx.merge(self.graphdef, params)


def model_spec(make_model: Callable[[nnx.Rngs], nnx.Module], seed: int) -> ModelSpec:
    """Traces `make_model` abstractly: no parameter memory is allocated."""
    abstract_model = nnx.eval_shape(lambda: make_model(nnx.Rngs(params=seed)))
    graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
    logical = jax.tree.map(logical_axes_of, abstract_state,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
    logical = nnx.to_pure_dict(logical) if isinstance(logical, nnx.State) else logical
    abstract_params = nnx.to_pure_dict(abstract_state)

    def init_params() -> Params:
        return nnx.to_pure_dict(nnx.state(make_model(nnx.Rngs(params=seed)), nnx.Param))

    return ModelSpec(graphdef, abstract_params, logical, init_params)


def resolve_objective(objective: Objective | None) -> Objective:
    """`train.objective`, or `CausalLm()` (a decoder LM) when it is not bound."""
    return CausalLm() if objective is None else objective


def build_model_spec(model_config: TransformerConfig, objective: Objective | None,
                     layout: Layout, seed: int) -> ModelSpec:
    """The objective's model for `model_config`, traced abstractly, its activations laid out.

    Its parameters' shardings are `layout.param_shardings(spec)`.

    Args:
      model_config: `train.model_config` (any family's config).
      objective: `train.objective`; None is `CausalLm()`.
      layout: The run's mesh and rules; the model constrains its activations
        with `layout.activation_sharder`.
      seed: `train.seed`; `ModelSpec.init_params` initialises from it.
    """
    objective = resolve_objective(objective)
    sharder = layout.activation_sharder
    return model_spec(
        lambda rngs: objective.build_model(model_config, rngs=rngs, shard=sharder), seed)
