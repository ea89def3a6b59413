"""A stack of identical blocks: built stacked for `jax.lax.scan` or as a list.

Encoders and encoder-decoders share this so each stack gets the same
`scan_layers` (compile time independent of depth) and `remat_policy`
behaviour as `DecoderLM`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.dropout import split_key

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

BlockFn = Callable[[nnx.Module, jax.Array, jax.Array | None], jax.Array]


def make_blocks(build: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, scan: bool,
                rngs: nnx.Rngs) -> nnx.Module:
    """`num_layers` blocks: one module with a leading `layers` axis, or an `nnx.List`."""
    if not scan:
        return nnx.List([build(rngs) for _ in range(num_layers)])

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def make_stacked(rngs: nnx.Rngs) -> nnx.Module:
        return build(rngs)

    return make_stacked(rngs)


def run_blocks(blocks: nnx.Module, x: jax.Array, apply_block: BlockFn, *, num_layers: int,
               scan: bool, remat_policy: str, dropout_key: jax.Array | None) -> jax.Array:
    """Applies `apply_block(block, x, layer_key)` for every block in order."""
    keys = jnp.stack(split_key(dropout_key, num_layers)) if dropout_key is not None else None
    if not scan:
        step = (nnx.remat(apply_block, policy=REMAT_POLICIES[remat_policy])
                if remat_policy != "none" else apply_block)
        for i, block in enumerate(blocks):
            x = step(block, x, None if keys is None else keys[i])
        return x

    graphdef, state = nnx.split(blocks)

    def body(carry, scanned):
        layer_state, layer_key = scanned
        return apply_block(nnx.merge(graphdef, layer_state), carry, layer_key), None

    if remat_policy != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)
    x, _ = jax.lax.scan(body, x, (state, keys))
    return x
