"""Logical-to-mesh axis rules, kept as data.

A rule maps one logical axis name (see `llmos_jax.models.axes`) to a mesh axis,
a tuple of mesh axes, or None (replicated). Rules are an ordered tuple of
pairs so gin files can override them whole; the first rule for a name whose
mesh axes are still free in the array being laid out wins, as in t5x/Flax.
A mesh axis that does not divide the dimension is dropped (replication) so
that, e.g., one multi-query key/value head stays whole under tensor
parallelism.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from jax.sharding import Mesh, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
AxisRules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: AxisRules = (
    # Parameters.
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("position", None),
    ("segment_types", None),  # small tables: replicated
    ("relpos_buckets", None),
    ("classes", None),
    # Batches and activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def _as_tuple(mesh_axes: MeshAxes) -> tuple[str, ...]:
    if mesh_axes is None:
        return ()
    return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules: AxisRules,
                         mesh: Mesh | None = None,
                         shape: Sequence[int] | None = None) -> PartitionSpec:
    """The PartitionSpec for an array labelled with `logical_axes`.

    Args:
      logical_axes: One name (or None) per dimension.
      rules: The ordered rule table.
      mesh: When given with `shape`, mesh axes of size 1 are skipped and axes
        that do not divide the dimension are dropped.
      shape: The array's shape.
    """
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical_axes):
        chosen: tuple[str, ...] = ()
        if name is not None:
            for rule_name, mesh_axes in rules:
                if rule_name != name:
                    continue
                candidate = tuple(a for a in _as_tuple(mesh_axes) if a not in used)
                if len(candidate) != len(_as_tuple(mesh_axes)):
                    continue
                chosen = candidate
                break
        if mesh is not None:
            chosen = tuple(a for a in chosen if mesh.shape[a] > 1)
            if shape is not None:
                kept: list[str] = []
                size = 1
                for axis in chosen:
                    if shape[dim] % (size * mesh.shape[axis]) == 0:
                        kept.append(axis)
                        size *= mesh.shape[axis]
                chosen = tuple(kept)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def rules_from_mapping(mapping: Mapping[str, MeshAxes] | Iterable[tuple[str, MeshAxes]]) -> AxisRules:
    """Accepts a dict or a sequence of pairs (gin gives lists) and returns the rule tuple."""
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return tuple((str(name), tuple(axes) if isinstance(axes, list) else axes) for name, axes in items)
