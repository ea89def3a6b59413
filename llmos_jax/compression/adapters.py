"""Adapter weights apart from their base: training only them, and saving them alone.

Parameters are the trainer's pure dicts (`nnx.to_pure_dict`); adapters are
the leaves named `lora_a` / `lora_b`, and the trained part is the adapters
plus any base parameter matching `LoraConfig.also_train` (a fresh task head).
`adapters_only` wraps an optimizer so the rest of the base gets no update and
no optimizer state at all (not zero moments: no arrays). `save_adapters`
writes the trained part alone as safetensors with its `LoraConfig`;
`load_adapters` checks it against the model it goes into.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from llmos_jax.compression.lora import ADAPTER_NAMES, LoraConfig
from llmos_jax.errors import UserError
from llmos_jax.models.param_paths import path_name

ADAPTERS_FILE = "adapters.safetensors"
CONFIG_FILE = "lora_config.json"
TRAINABLE, FROZEN = "adapter", "frozen"


def is_adapter_path(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in ADAPTER_NAMES


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} from a nested pure dict (list indices become digits)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat[path_name(path)] = leaf
    return flat


def is_trained_path(path: str, also_train: Sequence[str] = ()) -> bool:
    """Whether the parameter at `path` trains under LoRA: an adapter or `also_train`."""
    return is_adapter_path(path) or any(re.search(pattern, path) for pattern in also_train)


def adapter_params(params: Mapping[str, Any], also_train: Sequence[str] = ()) -> dict[str, Any]:
    """The adapter leaves of `params` (and those matching `also_train`), flat by path."""
    return {path: leaf for path, leaf in flatten(params).items()
            if is_trained_path(path, also_train)}


def adapter_labels(params: Any, also_train: Sequence[str] = ()) -> Any:
    """`params`' structure with 'adapter' on trained leaves and 'frozen' elsewhere."""
    def label(path, _):
        name = path_name(path)
        return TRAINABLE if is_trained_path(name, also_train) else FROZEN
    return jax.tree_util.tree_map_with_path(label, params)


def trained_mask(params: Any, also_train: Sequence[str] = ()) -> Any:
    """`params`' structure with True on the leaves LoRA trains (see `adapter_labels`)."""
    return jax.tree.map(lambda label: label == TRAINABLE, adapter_labels(params, also_train))


def adapters_only(tx: optax.GradientTransformation,
                  also_train: Sequence[str] = ()) -> optax.GradientTransformation:
    """`tx` on the adapters (and `also_train`); the rest is frozen with no optimizer state."""
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                                 lambda params: adapter_labels(params, also_train))


def save_adapters(directory: str | os.PathLike, params: Mapping[str, Any],
                  config: LoraConfig) -> int:
    """Writes the adapters of `params` (and `config`) to `directory`; returns their bytes."""
    from safetensors.numpy import save_file

    tensors = {path: np.asarray(jax.device_get(leaf)) for path, leaf in
               adapter_params(params, config.also_train).items()}
    if not tensors:
        raise UserError("these parameters hold no LoRA adapters; build the model with "
                        "compression.lora.apply_lora before saving adapters.")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTERS_FILE))
    record = dataclasses.asdict(config)
    record["target_patterns"] = list(config.target_patterns)
    record["also_train"] = list(config.also_train)
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return sum(t.nbytes for t in tensors.values())


def read_lora_config(directory: str | os.PathLike) -> LoraConfig:
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a folder written by save_adapters.")
    record = json.loads(path.read_text())
    record["target_patterns"] = tuple(record["target_patterns"])
    record["also_train"] = tuple(record.get("also_train", ()))
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
    also_train = read_lora_config(directory).also_train
    return replace_adapters(params, load_file(str(path)), str(path), also_train)


def replace_adapters(params: Mapping[str, Any], saved: Mapping[str, np.ndarray],
                     source: str, also_train: Sequence[str] = ()) -> Any:
    """`params` with its adapter leaves set from `saved` (flat by path), shapes checked.

    Base tensors trained in full (`also_train`, from the folder's
    lora_config.json) are expected in `saved` too and replace the model's.

    Raises:
      UserError: `saved` was made for another base: the first tensor whose path
        or shape differs is named.
    """
    path = source
    expected = adapter_params(params, also_train)
    for name in sorted(set(saved) | set(expected)):
        if name not in expected:
            raise UserError(f"{path} holds adapter tensor {name!r}, which this model does not "
                            "have: the adapters were trained for a different base model, target "
                            "patterns or also_train (see lora_config.json).")
        if name not in saved:
            raise UserError(f"{path} lacks adapter tensor {name!r} that this model has: the "
                            "adapters were trained for a different base model, target "
                            "patterns or also_train (see lora_config.json).")
        if tuple(saved[name].shape) != tuple(expected[name].shape):
            raise UserError(f"{path}: adapter tensor {name!r} has shape "
                            f"{tuple(saved[name].shape)} but this model's is "
                            f"{tuple(expected[name].shape)}: the adapters belong to a "
                            "different base model.")

    def replace(key_path, leaf):
        name = path_name(key_path)
        return np.asarray(saved[name]).astype(leaf.dtype) if name in saved else leaf

    return jax.tree_util.tree_map_with_path(replace, params)
