"""A stack of identical blocks: built stacked for `jax.lax.scan` or as a list.

Every family builds its layers with `make_blocks` and runs them with
`run_blocks`: `DecoderLM`, `Encoder` and both stacks of `EncoderDecoderLM`.
So `scan_layers` (compile time independent of depth), the scan's CPU
`unroll` and `remat_policy` mean the same thing in every family, and a
speed fix made here lands in all of them at once.
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

# Deepest stack that is unrolled on CPU. Unrolling costs compile time roughly
# linear in depth; CPU-sized models are shallow.
_CPU_UNROLL_MAX_LAYERS = 48

BlockFn = Callable[[nnx.Module, jax.Array, jax.Array | None], jax.Array]


def layer_scan_unroll(num_layers: int) -> int:
    """How many stacked layers one iteration of the layer scan runs.

    On CPU the whole stack is unrolled: the parameter layout stays stacked
    (a leading `layers` axis), but XLA:CPU then runs straight-line code
    instead of a while loop that zero-fills and copies the stacked
    residuals and gradients every step (a third of a small model's step time,
    see docs/performance.md). Elsewhere the loop stays rolled, so compile time
    does not grow with depth.

    `run_blocks` looks this function up on every trace, so a benchmark
    ablation (or a test) can replace it module-wide for every family.
    """
    if jax.default_backend() == "cpu" and num_layers <= _CPU_UNROLL_MAX_LAYERS:
        return max(num_layers, 1)
    return 1


def make_blocks(build: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, scan: bool,
                rngs: nnx.Rngs) -> nnx.Module:
    """`num_layers` blocks: one module with a leading `layers` axis, or an `nnx.List`.

    Stacked parameters carry the `layers` logical axis first, which the
    sharding rules leave unsplit; an unstacked list names its blocks 0, 1, ...
    """
    if not scan:
        return nnx.List([build(rngs) for _ in range(num_layers)])

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def make_stacked(rngs: nnx.Rngs) -> nnx.Module:
        return build(rngs)

    return make_stacked(rngs)


def run_blocks(blocks: nnx.Module, x: jax.Array, apply_block: BlockFn, *, num_layers: int,
               scan: bool, remat_policy: str, dropout_key: jax.Array | None) -> jax.Array:
    """Applies `apply_block(block, x, layer_key)` for every block in order.

    Stacked blocks (`scan`) run under `jax.lax.scan`, unrolled by
    `layer_scan_unroll(num_layers)`; a list runs as a Python loop. Either
    way each block is rematerialised with `remat_policy` ("none" keeps every
    activation) and gets its own dropout key split from `dropout_key`.
    """
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
    x, _ = jax.lax.scan(body, x, (state, keys), unroll=layer_scan_unroll(num_layers))
    return x
