"""What `llmos serve --lora NAME=PATH` loads: LoRA adapters served over the base model.

`PATH` is a folder of adapters alone, either
1. ours: `adapters.safetensors` + `lora_config.json`, as a `train.lora` run writes
   to `model_dir/adapters` (`compression.adapters.save_adapters`), or
2. Hugging Face PEFT's: `adapter_config.json` + `adapter_model.safetensors`
   (GPT-2, Llama-style and T5 bases, read by `convert.peft_lora`).

Each request picks an adapter by sending its NAME as the OpenAI `model`
field; the engine decodes every row with its own adapter in one batch
(`compression.multi_lora`).
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
from flax import nnx

from llmos_jax.compression.adapters import ADAPTERS_FILE, CONFIG_FILE, read_lora_config
from llmos_jax.compression.int8 import parameter_bytes
from llmos_jax.compression.multi_lora import AdapterWeights, attach_adapters
from llmos_jax.errors import UserError
from llmos_jax.inference.decoding_model import with_unstacked_layers

log = logging.getLogger("llmos_jax.serving")

__all__ = ["parse_adapter_flags", "read_adapter_folder", "with_adapters"]

LORA_FLAG = "--lora"
PEFT_CONFIG_FILE = "adapter_config.json"


def read_adapter_folder(name: str, path: str | os.PathLike, model: nnx.Module) -> AdapterWeights:
    """The adapter saved in `path` (ours or PEFT's), for `model`'s config.

    Raises:
      UserError: the folder is missing or holds neither format.
    """
    folder = pathlib.Path(path).expanduser().absolute()
    if (folder / CONFIG_FILE).is_file() and (folder / ADAPTERS_FILE).is_file():
        from safetensors.numpy import load_file

        tensors = load_file(str(folder / ADAPTERS_FILE))
        return AdapterWeights(read_lora_config(folder), tensors, str(folder))
    if (folder / PEFT_CONFIG_FILE).is_file():
        from llmos_jax.convert.peft_lora import read_peft_adapters

        config, tensors = read_peft_adapters(folder, model.config)
        return AdapterWeights(config, tensors, str(folder))
    raise UserError(f"{LORA_FLAG}={name}={path}: {folder} holds no adapters; pass a folder with "
                    f"{ADAPTERS_FILE} and {CONFIG_FILE} (a train.lora run's model_dir/adapters) "
                    f"or a PEFT folder ({PEFT_CONFIG_FILE} + adapter_model.safetensors).")


def with_adapters(model: nnx.Module, adapters: Mapping[str, str | os.PathLike]) -> nnx.Module:
    """`model` with per-layer blocks and the adapters in `adapters` ({name: folder}) attached.

    Raises:
      UserError: a folder holds no adapters, or adapters for another base model.
    """
    if not adapters:
        return model
    model = with_unstacked_layers(model)
    weights = {name: read_adapter_folder(name, path, model) for name, path in adapters.items()}
    sites = attach_adapters(model, weights)
    sizes = {name: sum(np.asarray(t).nbytes for t in w.tensors.values())
             for name, w in weights.items()}
    log.info("LoRA adapters %s on %d projections (bytes each: %s); parameters now %.1f MB",
             list(weights), sites, sizes,
             parameter_bytes(nnx.state(model, nnx.Param)) / 1e6)
    return model


def parse_adapter_flags(values: Sequence[str], flag: str = LORA_FLAG) -> dict[str, str]:
    """{name: path} from `NAME=PATH` flag values, in order.

    Raises:
      UserError: a value is not NAME=PATH, or a name repeats.
    """
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path or not re.fullmatch(r"[\w.:@/-]+", name):
            raise UserError(f"{flag}={value!r}: write {flag}=NAME=PATH, e.g. "
                            f"{flag}=shakespeare=runs/lora/model_dir/adapters (NAME is what "
                            "clients send as `model`).")
        if name in adapters:
            raise UserError(f"{flag}: the adapter name {name!r} is given twice; give each "
                            "adapter its own name.")
        adapters[name] = path
    return adapters
