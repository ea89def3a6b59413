"""Shared helpers for the inference tests: random models built without eager init, jitted calls."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_model(make_model, seed: int = 0, std: float = 0.1) -> nnx.Module:
    """`make_model(rngs)` with every weight drawn on the host (norm scales around 1).

    Built abstractly first, so no device initialisation runs op by op.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        base = 1.0 if path[-1] == "scale" else 0.0
        return jnp.asarray(base + rng.normal(0.0, std, leaf.shape), leaf.dtype)

    pure = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(
        lambda path, leaf: draw([getattr(p, "key", p) for p in path], leaf), pure))
    return nnx.merge(graphdef, state)


def jitted_forward(model: nnx.Module):
    """`model(*args, **kwargs)` jitted, with its parameters as an argument."""
    graphdef, params = nnx.split(model)
    run = jax.jit(lambda p, *args, **kwargs: nnx.merge(graphdef, p)(*args, **kwargs))
    return lambda *args, **kwargs: run(params, *args, **kwargs)
