"""The model a run trains, built from the run's settings: one path for train, eval and infer.

`train` builds its model spec here, and so does
`llmos_jax.inference.model_loading` for `llmos eval` and `llmos infer`, so a
checkpoint is always restored into the very module, parameter tree and
shardings that wrote it.
"""

from __future__ import annotations

from jax.sharding import Mesh

from llmos_jax.models.config import TransformerConfig
from llmos_jax.partitioning import AxisRules, LogicalSharder
from llmos_jax.training.objectives import CausalLm, Objective
from llmos_jax.training.train_state import ModelSpec, model_spec


def resolve_objective(objective: Objective | None) -> Objective:
    """`train.objective`, or `CausalLm()` (a decoder LM) when it is not bound."""
    return CausalLm() if objective is None else objective


def build_model_spec(model_config: TransformerConfig, objective: Objective | None, mesh: Mesh,
                     rules: AxisRules, seed: int) -> ModelSpec:
    """The objective's model for `model_config`, traced abstractly, its activations laid on `mesh`.

    Args:
      model_config: `train.model_config` (any family's config).
      objective: `train.objective`; None is `CausalLm()`.
      mesh: The mesh activations are constrained to (its `LogicalSharder`).
      rules: Logical-to-mesh rules, as `rules_from_mapping(train.axis_rules)`.
      seed: `train.seed`; `ModelSpec.init_params` initialises from it.
    """
    objective = resolve_objective(objective)
    sharder = LogicalSharder(mesh, rules)
    return model_spec(
        lambda rngs: objective.build_model(model_config, rngs=rngs, shard=sharder), seed)
