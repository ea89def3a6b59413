"""LoRA adapters in Hugging Face PEFT's format, both ways: GPT-2, Llama, BERT and T5.

PEFT writes ``adapter_config.json`` and ``adapter_model.safetensors`` with,
per adapted module, ``lora_A.weight`` [r, in] and ``lora_B.weight`` [out, r]
under ``base_model.model.<HF module name>.``. Which module of ours each HF
module is, and how our kernels lay out its inputs and outputs, comes from the
family's checkpoint table (`convert.peft_layouts`), so our ``lora_a`` [in...,
r] and ``lora_b`` [r, out...] are PEFT's A and B transposed and reshaped.

A fused HF module (GPT-2's ``c_attn`` = our query/key/value) is written as one
adapter of rank k*r (A stacked, B block diagonal) with ``rank_pattern`` /
``alpha_pattern`` so that PEFT's scale alpha/r stays ours. Read back, a fused
adapter of rank R gives each of ours rank R (exact, zero blocks included);
every adapter is zero-padded to the largest rank and its B rescaled to the
one scale we use.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmos_jax.compression.adapters import adapter_params
from llmos_jax.compression.lora import LoraConfig
from llmos_jax.convert.peft_layouts import LoraSite, layout_for
from llmos_jax.convert.tensor_mapping import LAYER
from llmos_jax.errors import UserError
from llmos_jax.models import TransformerConfig

log = logging.getLogger("llmos_jax.convert")

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_TENSOR = re.compile(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight")
_LISTED = 3  # module names quoted in one error message


def write_peft_adapters(directory: str | os.PathLike, params: Mapping[str, Any],
                        lora: LoraConfig, config: TransformerConfig, *,
                        base_model: str | None = None) -> None:
    """Writes the adapters in `params` as a PEFT LoRA adapter of the model's HF family.

    Args:
      directory: Created if absent; the two PEFT files are overwritten.
      params: The adapted model's parameters (``nnx.to_pure_dict``), stacked
        (``scan_layers``) or per layer.
      lora: The `LoraConfig` the adapters were made with (rank, alpha).
      config: The model's config; picks the family (`peft_layouts.layout_for`).
      base_model: Recorded as ``base_model_name_or_path`` (e.g. ``"gpt2"``).

    Raises:
      UserError: an adapter sits where the family's HF model has no module,
        or `params` holds no adapters.
    """
    from safetensors.numpy import save_file

    layout = layout_for(config)
    if lora.also_train:
        log.warning("write_peft_adapters writes the adapters only: the parameters trained in "
                    "full (LoraConfig.also_train=%s) are not written as PEFT modules_to_save; "
                    "PEFT will keep the base model's (e.g. a fresh head).", list(lora.also_train))
    flat = {path: np.asarray(value, np.float32) for path, value in adapter_params(params).items()}
    rank, tensors, patterns, used, done = lora.rank, {}, {}, set(), set()
    sites = layout.sites(config)
    for site in sites:
        for layer in range(site.num_layers):
            modules = [module.replace(LAYER, str(layer)) for module in site.our_modules]
            parts = [_our_adapter(flat, module, layer, used) for module in site.our_modules]
            if all(part is None for part in parts) or modules[0] in done:
                continue
            done.update(modules)
            a, b = _to_peft(site, parts, rank)
            name = _PEFT_PREFIX + site.hf_module.replace(LAYER, str(layer))
            tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = a, b
            if a.shape[0] != rank:
                patterns[site.hf_module.rsplit(".", 1)[-1]] = a.shape[0]
    unplaced = sorted(set(flat) - used)
    if unplaced:
        raise UserError(f"adapter {unplaced[0]!r} has no place in PEFT's {layout.family} layout; "
                        "adapt only the attention and MLP projections of the blocks "
                        "(compression.lora.ATTENTION_AND_MLP).")
    if not tensors:
        raise UserError("these parameters hold no LoRA adapters to write.")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    record = {
        "peft_type": "LORA", "task_type": layout.task_type, "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": _target_modules(sites, tensors),
        "fan_in_fan_out": layout.fan_in_fan_out, "bias": "none", "rank_pattern": patterns,
        "alpha_pattern": {name: lora.alpha * r / rank for name, r in patterns.items()},
        "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_peft_adapters(directory: str | os.PathLike, config: TransformerConfig
                       ) -> tuple[LoraConfig, dict[str, np.ndarray]]:
    """A PEFT LoRA adapter as our `LoraConfig` and per-layer adapter tensors by path.

    Build the model (per-layer blocks: ``scan_layers=False``), `apply_lora(model,
    lora_config)`, then put the tensors in with
    `compression.adapters.replace_adapters` (which checks shapes). A
    ``BertFor*`` adapter (``bert.`` names) goes into an ``EncoderFor*`` model,
    a ``BertModel`` one into an ``Encoder``.

    Raises:
      UserError: the folder is not a plain PEFT LoRA adapter, or it was made
        for another base model: the first tensor that does not fit is named.
    """
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    record = _read_record(config_path, weights_path)
    layout = layout_for(config)
    sites: dict[str, tuple[LoraSite, int]] = {}
    for site in layout.sites(config):
        for layer in range(site.num_layers):
            sites.setdefault(site.hf_module.replace(LAYER, str(layer)), (site, layer))
    adapters: dict[str, dict[str, np.ndarray]] = {}
    for name, value in sorted(load_file(str(weights_path)).items()):
        match = _TENSOR.fullmatch(name)
        if not match or match.group(1) not in sites:
            known = ", ".join(repr(module) for module in list(sites)[:_LISTED])
            raise UserError(f"{weights_path}: tensor {name!r} is not a LoRA weight of this "
                            f"{layout.family} model's blocks (attention and MLP projections, "
                            f"e.g. {known}); the adapter was made for a different base model "
                            "or adapts other modules (e.g. a pooler), which are not read.")
        site = sites[match.group(1)][0]
        _check_shape(weights_path, name, value, site, match.group(2))
        adapters.setdefault(match.group(1), {})[match.group(2)] = value.astype(np.float32)
    for module, parts in adapters.items():
        if len(parts) != 2:
            raise UserError(f"{weights_path}: module {module!r} has lora_{''.join(parts)} but not "
                            f"lora_{'B' if 'A' in parts else 'A'}; the file is incomplete.")
    if not adapters:
        raise UserError(f"{weights_path} holds no LoRA tensors.")
    max_rank = max(parts["A"].shape[0] for parts in adapters.values())
    ours: dict[str, np.ndarray] = {}
    for module, parts in adapters.items():
        site, layer = sites[module]
        factor = _alpha(record, module) / parts["A"].shape[0]  # ours is max_rank / max_rank = 1
        ours.update(_to_ours(site, layer, parts["A"], parts["B"] * factor, max_rank))
    lora = LoraConfig(rank=max_rank, alpha=float(max_rank),
                      dropout=float(record.get("lora_dropout", 0.0)),
                      target_patterns=_target_patterns(ours))
    return lora, ours


def _our_adapter(flat: Mapping[str, np.ndarray], module: str, layer: int,
                 used: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(lora_a, lora_b) of one layer of `module`, per-layer or stacked, or None."""
    for path, index in ((module.replace(LAYER, str(layer)), None),
                        (module.replace(f"/{LAYER}", ""), layer)):
        if f"{path}/lora_a" in flat:
            used.update((f"{path}/lora_a", f"{path}/lora_b"))
            a, b = flat[f"{path}/lora_a"], flat[f"{path}/lora_b"]
            return (a, b) if index is None else (a[index], b[index])
    return None


def _to_peft(site: LoraSite, parts: list[tuple[np.ndarray, np.ndarray] | None],
             rank: int) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's A [k*r, in] and B [sum out, k*r] of a site fusing k modules of ours."""
    blocks_a, blocks_b = [], []
    for part, out_size in zip(parts, site.out_sizes, strict=True):
        a, b = part or (np.zeros((site.in_size, rank), np.float32),
                        np.zeros((rank, out_size), np.float32))
        blocks_a.append(a.reshape(site.in_size, rank).T)
        blocks_b.append(b.reshape(rank, out_size).T)
    if len(parts) == 1:
        return blocks_a[0].copy(), blocks_b[0].copy()
    b_fused = np.zeros((sum(site.out_sizes), rank * len(parts)), np.float32)
    row = 0
    for block, b in enumerate(blocks_b):
        b_fused[row:row + b.shape[0], block * rank:(block + 1) * rank] = b
        row += b.shape[0]
    return np.concatenate(blocks_a, axis=0), b_fused


def _to_ours(site: LoraSite, layer: int, a: np.ndarray, b: np.ndarray,
             max_rank: int) -> dict[str, np.ndarray]:
    """Our per-layer lora_a / lora_b of each module in `site`, zero-padded to `max_rank`."""
    rank, ours, row = a.shape[0], {}, 0
    a_pad = np.zeros((site.in_size, max_rank), np.float32)
    a_pad[:, :rank] = a.T
    for module, out_shape, out_size in zip(site.our_modules, site.out_shapes, site.out_sizes,
                                           strict=True):
        b_pad = np.zeros((max_rank, out_size), np.float32)
        b_pad[:rank] = b[row:row + out_size].T
        row += out_size
        path = module.replace(LAYER, str(layer))
        ours[f"{path}/lora_a"] = a_pad.reshape(site.in_shape + (max_rank,))
        ours[f"{path}/lora_b"] = b_pad.reshape((max_rank,) + out_shape)
    return ours


def _read_record(config_path: pathlib.Path, weights_path: pathlib.Path) -> dict[str, Any]:
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
                        "(bias, modules_to_save) are not supported; retrain with bias='none' "
                        "and no modules_to_save (a SEQ_CLS task adds the classifier there).")
    return record


def _check_shape(weights_path: pathlib.Path, name: str, value: np.ndarray, site: LoraSite,
                 part: str) -> None:
    """Raises unless A is [r, in] and B [out, r] for this model's module."""
    expected = ((None, site.in_size) if part == "A" else (sum(site.out_sizes), None))
    if value.ndim != 2 or any(e is not None and e != n for e, n in zip(expected, value.shape)):
        shown = "[" + ", ".join("r" if e is None else str(e) for e in expected) + "]"
        raise UserError(f"{weights_path}: tensor {name!r} has shape {tuple(value.shape)}, but "
                        f"this model's module needs {shown}; the adapter was made for a "
                        "different base model (another size).")


def _alpha(record: Mapping[str, Any], module: str) -> float:
    """``lora_alpha``, or the ``alpha_pattern`` entry matching `module` (as PEFT matches)."""
    alpha = record.get("lora_alpha", 8)
    for pattern, value in (record.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
    return float(alpha)


def _target_modules(sites: list[LoraSite], tensors: Mapping[str, np.ndarray]
                    ) -> list[str] | str:
    """Short module names when they pick exactly the written modules, else an exact regex."""
    written = {name[len(_PEFT_PREFIX):-len(".lora_A.weight")] for name in tensors
               if name.endswith(".lora_A.weight")}
    shorts = {name.rsplit(".", 1)[-1] for name in written}
    roots = {_hf_root(name) for name in written}  # one naming: bert.* or encoder.*
    by_short = {site.hf_module.replace(LAYER, str(layer)) for site in sites
                for layer in range(site.num_layers)
                if site.hf_module.rsplit(".", 1)[-1] in shorts
                and _hf_root(site.hf_module) in roots}
    if by_short == written:
        return sorted(shorts)
    return "|".join(re.escape(name) for name in sorted(written))


def _hf_root(module: str) -> str:
    """The naming a module belongs to (``bert.`` vs ``encoder.``): its first part."""
    return module.split(".", 1)[0] + "."


def _target_patterns(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Our `LoraConfig.target_patterns` selecting exactly the modules in `tensors`."""
    modules = sorted({path.rsplit("/", 1)[0] for path in tensors})
    return [rf"^{re.escape(module)}$" for module in modules]
