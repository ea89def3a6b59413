"""Moving parameters between an NNX model and flat ``path -> numpy`` tables.

Every family converter (GPT-2, BERT, T5) does the same things around its
tensor table: list the target model's parameter shapes without allocating
them, fill an abstract model with converted arrays, read a live model's
parameters back to the host, and check user overrides of the config against
the fields ``config.json`` fixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.convert.tensor_mapping import (MappingTable, ParamPath, Shape, flatten_params,
                                              unflatten_params)


def abstract_model(build: Callable[[], nnx.Module]) -> nnx.Module:
    """The model's structure and parameter shapes, without allocating weights."""
    return nnx.eval_shape(build)


def param_specs(model: nnx.Module) -> dict[ParamPath, tuple[Shape, np.dtype]]:
    """Every parameter's path, shape and dtype."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {path: (tuple(leaf.shape), leaf.dtype) for path, leaf in flatten_params(pure).items()}


def host_params(model: nnx.Module) -> dict[ParamPath, np.ndarray]:
    """Every parameter gathered to this host as numpy."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {path: np.asarray(jax.device_get(leaf)) for path, leaf in flatten_params(pure).items()}


def converted_params(abstract: nnx.Module, table: MappingTable,
                     tensors: Mapping[str, np.ndarray], source: str) -> dict:
    """`tensors` converted by `table` into `abstract`'s parameters, as a nested dict of numpy.

    The dict matches ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``, so a
    model built elsewhere (e.g. sharded by the trainer) takes it with
    ``nnx.replace_by_pure_dict``.

    Args:
      source: Names the checkpoint in errors (missing, unexpected or
        wrong-shape tensors).
    """
    return unflatten_params(table.hf_tensors_to_params(tensors, param_specs(abstract), source))


def convert_into(abstract: nnx.Module, table: MappingTable, tensors: Mapping[str, np.ndarray],
                 source: str) -> nnx.Module:
    """`abstract` filled with `tensors` converted by `table` (on the default device)."""
    params = converted_params(abstract, table, tensors, source)
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, params))
    return nnx.merge(graphdef, state, rest)


def apply_overrides(from_file: Any, overrides: Mapping[str, Any],
                    architecture_fields: Sequence[str], family: str) -> Any:
    """`from_file` (a config dataclass) with user overrides of the fields config.json does not fix."""
    known = {field.name for field in dataclasses.fields(from_file)}
    config_name = type(from_file).__name__
    for field, value in overrides.items():
        if field not in known:
            raise UserError(f"{field!r} is not a {config_name} field; valid overrides: "
                            f"{', '.join(sorted(known - set(architecture_fields)))}.")
        if field in architecture_fields and value != getattr(from_file, field):
            raise UserError(f"cannot override {config_name}.{field}={value!r} when importing "
                            f"{family}: config.json fixes it to {getattr(from_file, field)!r}; "
                            "drop the override.")
    return dataclasses.replace(from_file, **overrides)
