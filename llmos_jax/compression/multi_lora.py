"""Several LoRA adapters over one base, each batch row decoding with its own.

Serving many fine-tunes of one base needs no copy of the base per adapter:
`attach_adapters` wraps every adapted projection in a `MultiLoraDense`,
which keeps the base projection (float or int8) and the stacked adapters of
all of them, `lora_a` [adapters + 1, in..., R] and `lora_b`
[adapters + 1, R, out...]. Row 0 is zero (the base model); each adapter's
scale alpha/r is folded into its `lora_b`, and smaller ranks are zero-padded
to the largest R, so one program serves every mix of adapters.

Which adapter a batch row uses is chosen per call: `select_adapters(model,
ids)` (ids [batch] int32, 0 = base) is called on the module built inside a
traced program, before the model runs. Each wrapped projection then adds
`(x @ A[ids]) @ B[ids]` per row. A model never given ids is the base model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.compression.lora import LoraConfig, _dense_modules, _replace
from llmos_jax.errors import UserError
from llmos_jax.models.dense import _LETTERS, Dense

__all__ = ["AdapterWeights", "MultiLoraDense", "attach_adapters", "select_adapters",
           "adapter_names"]


@dataclasses.dataclass(frozen=True)
class AdapterWeights:
    """One adapter as saved: its `LoraConfig` and its tensors by parameter path.

    Attributes:
      config: Gives the scale alpha/rank.
      tensors: ``{"layers/0/attn/query/lora_a": [in..., r], ".../lora_b": [r, out...]}``
        (as `compression.adapters.save_adapters` writes them, or
        `convert.peft_lora.read_peft_adapters` reads them).
      source: Where it was read from, for error messages.
    """

    config: LoraConfig
    tensors: Mapping[str, np.ndarray]
    source: str


class MultiLoraDense(nnx.Module):
    """A base projection plus stacked adapters; each batch row adds its own adapter's delta."""

    def __init__(self, base: Dense, lora_a: np.ndarray, lora_b: np.ndarray,
                 names: tuple[str, ...]):
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.adapter_names = names
        self.lora_a = nnx.Param(jnp.asarray(lora_a))
        self.lora_b = nnx.Param(jnp.asarray(lora_b))
        self.rows = None  # set per traced call by `select_adapters`

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base(x)
        if self.rows is None:
            return y
        if self.rows.shape != x.shape[:1]:
            raise ValueError(f"adapter ids {self.rows.shape} do not match the batch of "
                             f"{x.shape}: pass one id per row")
        n_in, n_out = len(self.in_features), len(self.out_features)
        lead = _LETTERS[1: x.ndim - n_in]  # axes between the batch row and the features
        contract = _LETTERS[x.ndim - n_in: x.ndim]
        out = _LETTERS[x.ndim: x.ndim + n_out]
        a = jnp.take(self.lora_a[...], self.rows, axis=0).astype(x.dtype)
        b = jnp.take(self.lora_b[...], self.rows, axis=0).astype(x.dtype)
        low = jnp.einsum(f"z{lead}{contract},z{contract}R->z{lead}R", x, a)
        return y + jnp.einsum(f"z{lead}R,zR{out}->z{lead}{out}", low, b)


def select_adapters(model: nnx.Module, ids: jax.Array) -> None:
    """Makes every `MultiLoraDense` of `model` use adapter `ids[row]` for each batch row.

    Call it on a module built inside a traced program (it keeps `ids`); a model
    with no adapters is left as it is.
    """
    for _, node in nnx.iter_graph(model):
        if isinstance(node, MultiLoraDense):
            node.rows = nnx.data(ids)


def adapter_names(model: nnx.Module) -> tuple[str, ...]:
    """The adapters attached to `model`, in id order (id 1 is the first); () if none."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, MultiLoraDense):
            return node.adapter_names
    return ()


def attach_adapters(model: nnx.Module, adapters: Mapping[str, AdapterWeights]) -> int:
    """Wraps, in place, each projection any adapter targets in a `MultiLoraDense`.

    The model must have per-layer blocks (no `scan_layers` stack); adapter
    tensors saved from a stacked model ([layers, ...] under a path without a
    layer index) are split per layer. Adapter ids follow `adapters`' order,
    from 1.

    Returns:
      How many projections were wrapped.

    Raises:
      UserError: an adapter holds a tensor this model has no projection for, or
        one whose shape differs (the first such tensor is named), or no tensors.
    """
    if not adapters:
        return 0
    modules = dict(_dense_modules(model))
    deltas: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    for name, weights in adapters.items():
        deltas.append(_adapter_deltas(name, weights, modules))
    sites = sorted(set().union(*deltas), key=list(modules).index)
    names = tuple(adapters)
    for path in sites:
        dense = modules[path]
        rank = max(delta[path][0].shape[-1] for delta in deltas if path in delta)
        a = np.zeros((len(names) + 1,) + dense.in_features + (rank,), np.float32)
        b = np.zeros((len(names) + 1, rank) + dense.out_features, np.float32)
        for index, delta in enumerate(deltas, start=1):
            if path in delta:
                site_a, site_b = delta[path]
                a[index, ..., :site_a.shape[-1]] = site_a
                b[index, :site_b.shape[0]] = site_b
        _replace(model, path, MultiLoraDense(dense, a, b, names))
    return len(sites)


def _adapter_deltas(name: str, weights: AdapterWeights, modules: Mapping[str, Dense]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module path: (A [in..., r], B * scale [r, out...])} of one adapter, checked."""
    tensors = _per_layer(dict(weights.tensors), modules)
    if not tensors:
        raise UserError(f"adapter {name!r} ({weights.source}) holds no adapter tensors (lora_a / "
                        "lora_b); pass a folder written by `llmos train` with train.lora "
                        "(model_dir/adapters) or by PEFT.")
    trained_in_full = sorted(t for t in tensors if t.rpartition("/")[2] not in ("lora_a", "lora_b")
                             and weights.config.also_train)
    if trained_in_full:
        raise UserError(
            f"adapter {name!r} ({weights.source}) also trains base weights in full "
            f"({trained_in_full[:3]}, LoraConfig.also_train), which requests sharing one batch "
            "cannot swap per row; serve that run's merged model_dir/export instead.")
    sites: dict[str, dict[str, np.ndarray]] = {}
    for tensor_name in sorted(tensors):
        path, _, kind = tensor_name.rpartition("/")
        dense = modules.get(path)
        if dense is None or kind not in ("lora_a", "lora_b"):
            raise UserError(
                f"adapter {name!r} ({weights.source}): adapter tensor {tensor_name!r} has no "
                f"projection {path!r} in the served model (its projections are e.g. "
                f"{list(modules)[:4]}): the adapter was trained for a different base model.")
        value = np.asarray(tensors[tensor_name], np.float32)
        features = dense.in_features if kind == "lora_a" else dense.out_features
        fits = (value.shape[:-1] == features if kind == "lora_a"
                else value.shape[1:] == features)
        if value.ndim != len(features) + 1 or not fits:
            raise UserError(
                f"adapter {name!r} ({weights.source}): adapter tensor {tensor_name!r} has shape "
                f"{value.shape}, which does not fit the served model's {path!r} (in "
                f"{dense.in_features}, out {dense.out_features}): the adapter was trained for "
                "a different base model.")
        sites.setdefault(path, {})[kind] = value
    deltas = {}
    for path, parts in sites.items():
        if set(parts) != {"lora_a", "lora_b"}:
            raise UserError(f"adapter {name!r} ({weights.source}): {path!r} has only "
                            f"{sorted(parts)}; an adapter needs lora_a and lora_b.")
        if parts["lora_a"].shape[-1] != parts["lora_b"].shape[0]:
            raise UserError(f"adapter {name!r} ({weights.source}): {path!r}'s lora_a and lora_b "
                            "have different ranks; the file is damaged.")
        deltas[path] = (parts["lora_a"], parts["lora_b"] * weights.config.scale)
    return deltas


def _per_layer(tensors: dict[str, np.ndarray], modules: Mapping[str, Dense]
               ) -> dict[str, np.ndarray]:
    """Tensors of a stacked model (`layers/attn/query/lora_a` [L, ...]) split per layer."""
    out = {}
    for name, value in tensors.items():
        path = name.rpartition("/")[0]
        if path in modules:
            out[name] = value
            continue
        parts = name.split("/")
        for cut in range(1, len(parts) - 1):
            first = "/".join(parts[:cut] + ["0"] + parts[cut:-1])
            if first in modules and value.ndim >= 1:
                for layer in range(value.shape[0]):
                    out["/".join(parts[:cut] + [str(layer)] + parts[cut:])] = value[layer]
                break
        else:
            out[name] = value  # refused by the caller, with its name
    return out

