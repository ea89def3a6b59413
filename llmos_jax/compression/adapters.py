"""Adapter weights apart from their base: training only them, and saving them alone.

Parameters are the trainer's pure dicts (`nnx.to_pure_dict`); adapters are
the leaves named `lora_a` / `lora_b`. `adapters_only` wraps an optimizer so
the base gets no update and no optimizer state at all (not zero moments: no
arrays). `save_adapters` writes the adapters alone as safetensors with their
`LoraConfig`; `load_adapters` checks them against the model they go into.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from llmos_jax.compression.lora import ADAPTER_NAMES, LoraConfig
from llmos_jax.errors import UserError

ADAPTERS_FILE = "adapters.safetensors"
CONFIG_FILE = "lora_config.json"
TRAINABLE, FROZEN = "adapter", "frozen"


def is_adapter_path(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in ADAPTER_NAMES


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} from a nested pure dict (list indices become digits)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = leaf
    return flat


def adapter_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter leaves of `params`, flat by path."""
    return {path: leaf for path, leaf in flatten(params).items() if is_adapter_path(path)}


def adapter_labels(params: Any) -> Any:
    """`params`' structure with 'adapter' on adapter leaves and 'frozen' elsewhere."""
    def label(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return TRAINABLE if name in ADAPTER_NAMES else FROZEN
    return jax.tree_util.tree_map_with_path(label, params)


def adapters_only(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` on the adapters; the base is frozen and holds no optimizer state."""
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, adapter_labels)


def save_adapters(directory: str | os.PathLike, params: Mapping[str, Any],
                  config: LoraConfig) -> int:
    """Writes the adapters of `params` (and `config`) to `directory`; returns their bytes."""
    from safetensors.numpy import save_file

    tensors = {path: np.asarray(jax.device_get(leaf)) for path, leaf in
               adapter_params(params).items()}
    if not tensors:
        raise UserError("these parameters hold no LoRA adapters; build the model with "
                        "compression.lora.apply_lora before saving adapters.")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTERS_FILE))
    record = dataclasses.asdict(config)
    record["target_patterns"] = list(config.target_patterns)
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return sum(t.nbytes for t in tensors.values())


def read_lora_config(directory: str | os.PathLike) -> LoraConfig:
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a folder written by save_adapters.")
    record = json.loads(path.read_text())
    record["target_patterns"] = tuple(record["target_patterns"])
    return LoraConfig(**record)


def load_adapters(directory: str | os.PathLike, params: Mapping[str, Any]) -> Any:
    """`params` with its adapter leaves replaced by those saved in `directory`.

    Raises:
      UserError: the saved adapters were made for another base: the first
        tensor whose path or shape differs is named.
    """
    from safetensors.numpy import load_file

    path = pathlib.Path(directory) / ADAPTERS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a folder written by save_adapters.")
    return replace_adapters(params, load_file(str(path)), str(path))


def replace_adapters(params: Mapping[str, Any], saved: Mapping[str, np.ndarray],
                     source: str) -> Any:
    """`params` with its adapter leaves set from `saved` (flat by path), shapes checked.

    Raises:
      UserError: `saved` was made for another base: the first tensor whose path
        or shape differs is named.
    """
    path = source
    expected = adapter_params(params)
    for name in sorted(set(saved) | set(expected)):
        if name not in expected:
            raise UserError(f"{path} holds adapter tensor {name!r}, which this model does not "
                            "have: the adapters were trained for a different base model or "
                            "target patterns (see lora_config.json).")
        if name not in saved:
            raise UserError(f"{path} lacks adapter tensor {name!r} that this model has: the "
                            "adapters were trained for a different base model or target "
                            "patterns (see lora_config.json).")
        if tuple(saved[name].shape) != tuple(expected[name].shape):
            raise UserError(f"{path}: adapter tensor {name!r} has shape "
                            f"{tuple(saved[name].shape)} but this model's is "
                            f"{tuple(expected[name].shape)}: the adapters belong to a "
                            "different base model.")

    def replace(key_path, leaf):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)
        return np.asarray(saved[name]).astype(leaf.dtype) if name in saved else leaf

    return jax.tree_util.tree_map_with_path(replace, params)
