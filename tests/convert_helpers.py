"""Shared helpers for the Hugging Face conversion tests."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.convert.model_params import host_params


def randomise(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """`model` with every parameter redrawn on the host (norm scales around 1)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        base = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(base + rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)

    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = jax.tree_util.tree_map_with_path(draw, pure)
    param_state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(param_state, params)
    nnx.update(model, param_state)
    return model


def randomise_torch(torch, model, norm_pattern: str):
    """Every torch parameter redrawn; names matching `norm_pattern` centred on 1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            base = 1.0 if re.search(norm_pattern, name) else 0.0
            parameter.copy_(base + 0.1 * torch.randn_like(parameter))
    return model.eval()


def assert_same_params(left: nnx.Module, right: nnx.Module) -> None:
    left_params, right_params = host_params(left), host_params(right)
    assert left_params.keys() == right_params.keys()
    for path in left_params:
        np.testing.assert_array_equal(left_params[path], right_params[path], err_msg=str(path))


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
