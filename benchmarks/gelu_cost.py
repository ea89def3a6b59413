#!/usr/bin/env python
"""The exact (erf) GELU against the tanh approximation, alone: forward and backward, jitted.

Shape [3072, 512]: the MLP hidden activations of the small setup's four layers
(batch 12 x context 64 rows, 4 x 128 wide). Prints the median milliseconds of
30 calls of `value_and_grad(sum(gelu(x)))` for `jax.nn.gelu(approximate=False)`,
`approximate=True`, and the erf formula written out. Compare with the same
switch inside a whole step (`llmos train ... --gin.TransformerConfig.mlp_activation`,
docs/performance.md) to see how much of the cost is fusion, not the erf.

    python benchmarks/gelu_cost.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPE = (12 * 64 * 4, 512)


def main() -> None:
    x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32))
    variants = {
        "exact (erf)": lambda v: jax.nn.gelu(v, approximate=False),
        "tanh": lambda v: jax.nn.gelu(v, approximate=True),
        "erf written out": lambda v: v * 0.5 * (1 + jax.lax.erf(v * 0.7071067811865476)),
    }
    for name, gelu in variants.items():
        step = jax.jit(jax.value_and_grad(lambda v, g=gelu: jnp.sum(g(v) * 1.0001)))
        step(x)[1].block_until_ready()
        times = []
        for _ in range(30):
            started = time.perf_counter()
            step(x)[1].block_until_ready()
            times.append(time.perf_counter() - started)
        print(f"{name}: {statistics.median(times) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
