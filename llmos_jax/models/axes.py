"""Logical axis names, and how layers attach them to parameters and activations.

Layers never name mesh axes. They label every parameter dimension and the key
activations with the logical names below; the partitioning layer maps those
names onto a device mesh with rules kept as data (see
`llmos_jax.partitioning.rules`). A model built without a sharder runs
unsharded, so model code stays usable without any mesh.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Parameter axes.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
KV = "kv"  # the per-head feature dimension
MLP = "mlp"
VOCAB = "vocab"
LAYERS = "layers"
POSITION = "position"  # rows of a learned position table
SEGMENT_TYPES = "segment_types"  # rows of BERT's token-type (sentence A/B) table
RELPOS_BUCKETS = "relpos_buckets"  # rows of T5's relative-position bias table
CLASSES = "classes"  # outputs of a classification head

# Activation axes: separate names so activations and weights can be laid out
# independently (e.g. batch over data+fsdp, weights' embed over fsdp).
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
ACT_MLP = "activation_mlp"
ACT_VOCAB = "activation_vocab"

LogicalAxes = tuple[str | None, ...]


class ActivationSharder(Protocol):
    """Constrains an activation's layout given its logical axis names."""

    def __call__(self, x: jax.Array, logical_axes: LogicalAxes) -> jax.Array: ...


def no_sharding(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
    """The default sharder: leaves the activation to the compiler."""
    del logical_axes
    return x


Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def make_param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    logical_axes: LogicalAxes,
    dtype: jnp.dtype,
) -> nnx.Param:
    """A parameter labelled with one logical axis name per dimension."""
    if len(shape) != len(logical_axes):
        raise ValueError(f"shape {tuple(shape)} and logical axes {logical_axes} differ in rank")
    value = init(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, out_sharding=tuple(logical_axes), eager_sharding=False)


def logical_axes_of(variable: nnx.Variable) -> LogicalAxes:
    """The logical axis names a parameter was created with (after any `layers` stacking)."""
    axes = variable.get_metadata().get("out_sharding")
    if axes is None:
        return (None,) * jnp.ndim(variable.get_value())
    return tuple(axes)
