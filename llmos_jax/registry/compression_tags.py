"""Lineage of compressed versions: how a version was made smaller from its parent, and by how much.

A compressed version is registered like any other (its own verified copy of
an export) with these version tags besides `llmos.parent`:

- `llmos.compression`: `lora` (a `train.lora` run: the export holds the merged
  weights, `adapters/` beside it the adapters alone, registered too),
  `distillation` (a student trained from its parent as teacher), or `int8`
  (the parent's float export, to be loaded with `--quantize=int8`: the tag
  `llmos.quantize` says so).
- `llmos.param_bytes`: the weights' bytes as served (for `int8`: int8 kernels
  and embedding tables plus their float32 scales, sized abstractly).
- `llmos.adapter_bytes` (`lora`): the adapters' bytes alone.
- `llmos.size_vs_parent`: `param_bytes` over the parent's (for `lora`: the
  adapters' bytes over the parent's), when the parent records its bytes.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

from llmos_jax.errors import UserError

TAG = "llmos."
METHODS = ("lora", "distillation", "int8")
ADAPTERS_DIRNAME = "adapters"  # a `train.lora` run's model_dir/adapters


def stored_bytes(export: pathlib.Path) -> int:
    """Bytes of the export's parameters as stored, from Orbax's metadata (no array is read)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    metadata = ocp.StandardCheckpointer().metadata(export / "params")
    tree = getattr(metadata, "item_metadata", metadata)
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape"))
               if getattr(leaf, "shape", None) is not None)


def int8_bytes(meta: dict[str, Any], export: pathlib.Path) -> int:
    """Bytes of the export's weights once quantized to int8 (`compression.int8`)."""
    from flax import nnx

    from llmos_jax.compression.int8 import int8_parameter_bytes
    from llmos_jax.models.families import get_family

    family_name, saved = meta.get("model_family"), meta.get("model_config")
    if not family_name or not isinstance(saved, dict):
        raise UserError(f"{export}/meta.json names no model_family and model_config; export "
                        "the run again with `llmos train` before registering its int8 version.")
    family = get_family(family_name)
    config = family.config_class(**saved)
    return int8_parameter_bytes(lambda: family.build(config, rngs=nnx.Rngs(0)))[1]


def compression_tags(method: str, *, parent: str | None, export: pathlib.Path,
                     run_dir: pathlib.Path, meta: dict[str, Any],
                     parent_tags: dict[str, str] | None) -> dict[str, str]:
    """The version tags of a `method`-compressed export (see the module docstring).

    Raises:
      UserError: an unknown method, no parent, or a `lora` run without adapters.
    """
    if method not in METHODS:
        raise UserError(f"--compression={method!r}: use one of {', '.join(METHODS)}.")
    if not parent:
        raise UserError(f"--compression={method} needs --parent=NAME/VERSION, the registered "
                        "version it was compressed from (for distillation: the teacher).")
    if parent_tags is None:
        raise UserError(f"--parent={parent!r} is not a registered version (NAME/VERSION) in this "
                        "store; register the parent first, or name it as `llmos models list` "
                        "shows it.")
    tags = {f"{TAG}compression": method, f"{TAG}parent": parent}
    size = stored_bytes(export)
    if method == "int8":
        size = int8_bytes(meta, export)
        tags[f"{TAG}quantize"] = "int8"
    tags[f"{TAG}param_bytes"] = str(size)
    compared = size
    if method == "lora":
        adapters = adapter_folder(run_dir)
        if adapters is None:
            raise UserError(f"--compression=lora: {run_dir} has no {ADAPTERS_DIRNAME}/ folder; "
                            "register the model_dir of a run trained with train.lora.")
        compared = adapter_bytes(adapters)
        tags[f"{TAG}adapter_bytes"] = str(compared)
    parent_size = parent_tags.get(f"{TAG}param_bytes")
    if parent_size and int(parent_size) > 0:
        tags[f"{TAG}size_vs_parent"] = f"{compared / int(parent_size):.4f}"
    return tags


def adapter_folder(run_dir: pathlib.Path) -> pathlib.Path | None:
    """The run's `adapters/` (safetensors + lora_config.json), if it has one."""
    folder = run_dir / ADAPTERS_DIRNAME
    return folder if (folder / "lora_config.json").is_file() else None


def adapter_bytes(folder: pathlib.Path) -> int:
    """Bytes of the adapter tensors in `folder`/adapters.safetensors (header not counted)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "adapters.safetensors"), framework="numpy") as tensors:
        for name in tensors.keys():
            total += tensors.get_tensor(name).nbytes
    return total


def describe(tags: dict[str, str]) -> list[str]:
    """Lines for `llmos models show` about a version's size and compression."""
    lines = []
    if f"{TAG}param_bytes" in tags:
        lines.append(f"  parameter bytes: {int(tags[TAG + 'param_bytes']):,}")
    if f"{TAG}compression" in tags:
        line = f"  compression: {tags[TAG + 'compression']} of {tags.get(TAG + 'parent', '?')}"
        if f"{TAG}adapter_bytes" in tags:
            line += f", adapters {int(tags[TAG + 'adapter_bytes']):,} bytes"
        if f"{TAG}size_vs_parent" in tags:
            line += f", {float(tags[TAG + 'size_vs_parent']):.3f}x the parent's bytes"
        lines.append(line)
    return lines
