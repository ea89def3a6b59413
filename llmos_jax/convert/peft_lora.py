"""LoRA adapters in Hugging Face PEFT's format, for GPT-2: both directions.

PEFT writes ``adapter_config.json`` and ``adapter_model.safetensors`` with,
per adapted ``Conv1D``, ``lora_A.weight`` [r, in] and ``lora_B.weight``
[out, r] under ``base_model.model.transformer.h.<i>.``. Our GPT-2 (see
`convert.gpt2`) splits HF's fused ``c_attn`` into query/key/value, each with
its own adapter; fused, they are one adapter of rank 3r (A stacked, B block
diagonal), written with ``rank_pattern``/``alpha_pattern`` so that PEFT's
scale alpha/r stays ours. Read back, a fused adapter of rank R gives each of
query/key/value rank R (exact, zero blocks included); every adapter is
zero-padded to the largest rank and its B rescaled to the one scale we use.

| ours (``layers/<i>/``)         | PEFT (``transformer.h.<i>.``) |
|--------------------------------|-------------------------------|
| ``attn/{query,key,value}``     | ``attn.c_attn`` (fused)       |
| ``attn/out``                   | ``attn.c_proj``               |
| ``mlp/wi``                     | ``mlp.c_fc``                  |
| ``mlp/wo``                     | ``mlp.c_proj``                |
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmos_jax.compression.adapters import adapter_params
from llmos_jax.compression.lora import LoraConfig
from llmos_jax.errors import UserError
from llmos_jax.models import TransformerConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model.transformer.h."
_QKV = ("query", "key", "value")
_SINGLE = {"attn/out": "attn.c_proj", "mlp/wi": "mlp.c_fc", "mlp/wo": "mlp.c_proj"}
_PATTERNS = {"attn/out": r"attn/out$", "mlp/wi": r"mlp/wi$", "mlp/wo": r"mlp/wo$"}


def _layer_adapters(params: Mapping[str, Any], config: TransformerConfig
                    ) -> list[dict[str, np.ndarray]]:
    """Per layer, {'attn/query/lora_a': array, ...} from stacked or listed layers."""
    flat = {path: np.asarray(value, np.float32) for path, value in adapter_params(params).items()}
    layers: list[dict[str, np.ndarray]] = [{} for _ in range(config.num_layers)]
    for path, value in flat.items():
        stacked = re.fullmatch(r"layers/((?:attn|mlp)/\w+/lora_[ab])", path)
        listed = re.fullmatch(r"layers/(\d+)/((?:attn|mlp)/\w+/lora_[ab])", path)
        if stacked:
            for index in range(config.num_layers):
                layers[index][stacked.group(1)] = value[index]
        elif listed:
            layers[int(listed.group(1))][listed.group(2)] = value
        else:
            raise UserError(f"adapter {path!r} has no place in PEFT's GPT-2 layout; adapt only "
                            "attn/{query,key,value,out} and mlp/{wi,wo}.")
    return layers


def write_peft_adapters(directory: str | os.PathLike, params: Mapping[str, Any],
                        lora: LoraConfig, config: TransformerConfig, *,
                        base_model: str = "gpt2") -> None:
    """Writes the adapters in `params` as a PEFT LoRA adapter for ``GPT2LMHeadModel``."""
    from safetensors.numpy import save_file

    rank, tensors, modules, fused_rank = lora.rank, {}, set(), 0
    for index, layer in enumerate(_layer_adapters(params, config)):
        prefix = f"{_PREFIX}{index}."
        if any(f"attn/{name}/lora_a" in layer for name in _QKV):
            blocks_a, blocks_b = [], []
            for name in _QKV:
                a = layer.get(f"attn/{name}/lora_a", np.zeros((config.embed_dim, rank), np.float32))
                b = layer.get(f"attn/{name}/lora_b",
                              np.zeros((rank, config.num_heads, config.head_dim), np.float32))
                blocks_a.append(a.T)
                blocks_b.append(b.reshape(rank, -1).T)
            fused_rank = 3 * rank
            a_fused = np.concatenate(blocks_a, axis=0)
            b_fused = np.zeros((sum(b.shape[0] for b in blocks_b), fused_rank), np.float32)
            row = 0
            for block, b in enumerate(blocks_b):
                b_fused[row:row + b.shape[0], block * rank:(block + 1) * rank] = b
                row += b.shape[0]
            tensors[f"{prefix}attn.c_attn.lora_A.weight"] = a_fused
            tensors[f"{prefix}attn.c_attn.lora_B.weight"] = b_fused
            modules.add("c_attn")
        for ours, theirs in _SINGLE.items():
            if f"{ours}/lora_a" in layer:
                a, b = layer[f"{ours}/lora_a"], layer[f"{ours}/lora_b"]
                tensors[f"{prefix}{theirs}.lora_A.weight"] = a.reshape(-1, rank).T.copy()
                tensors[f"{prefix}{theirs}.lora_B.weight"] = b.reshape(rank, -1).T.copy()
                modules.add(theirs.split(".")[-1])
    if not tensors:
        raise UserError("these parameters hold no LoRA adapters to write.")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    patterns = {"c_attn": fused_rank} if fused_rank else {}
    record = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": sorted(modules), "fan_in_fan_out": True, "bias": "none",
        "rank_pattern": patterns,
        "alpha_pattern": {name: lora.alpha * r / rank for name, r in patterns.items()},
        "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_peft_adapters(directory: str | os.PathLike, config: TransformerConfig
                       ) -> tuple[LoraConfig, dict[str, np.ndarray]]:
    """A PEFT GPT-2 LoRA adapter as our `LoraConfig` and adapter tensors by path.

    Build the model, `apply_lora(model, lora_config)`, then put the tensors in
    with `compression.adapters.replace_adapters` (which checks shapes).
    """
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(f"{path} does not exist; pass a folder written by PEFT's "
                            "save_pretrained (adapter_config.json + adapter_model.safetensors).")
    record = json.loads(config_path.read_text())
    if record.get("peft_type") != "LORA" or record.get("use_rslora") or record.get("use_dora"):
        raise UserError(f"{config_path}: only plain LoRA adapters are read (peft_type LORA, "
                        "no rsLoRA, no DoRA).")
    if record.get("bias", "none") != "none" or record.get("modules_to_save"):
        raise UserError(f"{config_path}: adapters that train biases or whole modules "
                        "(bias, modules_to_save) are not supported; retrain with bias='none'.")
    tensors = load_file(str(weights_path))
    adapters: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, value in tensors.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|"
                             r"attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])(?:\.default)?"
                             r"\.weight", name)
        if not match:
            raise UserError(f"{weights_path}: tensor {name!r} is not a GPT-2 LoRA weight this "
                            "reader knows (c_attn, c_proj, c_fc).")
        adapters.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = value

    def scale_of(module: str, rank: int) -> float:
        short = module.split(".")[-1]
        alpha = record.get("lora_alpha", 8)
        for pattern, value in (record.get("alpha_pattern") or {}).items():
            if re.search(rf"(^|\.)({pattern})$", module) or pattern == short:
                alpha = value
        return alpha / rank

    max_rank = max(parts["A"].shape[0] for parts in adapters.values())
    ours: dict[str, np.ndarray] = {}
    heads, head_dim = config.num_heads, config.head_dim

    def padded(a: np.ndarray, b: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
        """A [in, R] and B*factor [R, out], zero-padded to `max_rank`."""
        rank = a.shape[0]
        a_pad = np.zeros((a.shape[1], max_rank), np.float32)
        b_pad = np.zeros((max_rank, b.shape[0]), np.float32)
        a_pad[:, :rank], b_pad[:rank] = a.T, b.T * factor
        return a_pad, b_pad

    for (index, module), parts in sorted(adapters.items()):
        a, b = parts["A"].astype(np.float32), parts["B"].astype(np.float32)
        factor = scale_of(module, a.shape[0])  # our scale is max_rank / max_rank = 1
        prefix = f"layers/{index}/"
        if module == "attn.c_attn":
            for block, name in enumerate(_QKV):
                width = heads * head_dim
                a_pad, b_pad = padded(a, b[block * width:(block + 1) * width], factor)
                ours[f"{prefix}attn/{name}/lora_a"] = a_pad
                ours[f"{prefix}attn/{name}/lora_b"] = b_pad.reshape(max_rank, heads, head_dim)
            continue
        ours_name = {v: k for k, v in _SINGLE.items()}[module]
        a_pad, b_pad = padded(a, b, factor)
        if ours_name == "attn/out":
            a_pad = a_pad.reshape(heads, head_dim, max_rank)
        ours[f"{prefix}{ours_name}/lora_a"] = a_pad
        ours[f"{prefix}{ours_name}/lora_b"] = b_pad
    kinds = {module for _, module in adapters}
    targets = ([r"attn/(query|key|value)$"] if "attn.c_attn" in kinds else []) + [
        _PATTERNS[k] for k, v in _SINGLE.items() if v in kinds]
    lora = LoraConfig(rank=max_rank, alpha=float(max_rank),
                      dropout=float(record.get("lora_dropout", 0.0)), target_patterns=targets)
    return lora, ours
