"""Reading and writing a Hugging Face model directory: config.json + safetensors.

Only the safetensors format is read: it is a flat name -> array table that
numpy opens without PyTorch (``pytorch_model.bin`` is a pickle that needs
torch to load, and loading a pickle runs code). Sharded checkpoints
(``model.safetensors.index.json`` naming several files) are read; writing
always produces one ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so bf16 checkpoints load)
import numpy as np

from llmos_jax.errors import UserError

try:
    import safetensors
    import safetensors.numpy as safetensors_numpy
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "llmos_jax.convert needs the safetensors package: pip install 'llmos_jax[reference]'"
    ) from error

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class HfCheckpoint:
    """A Hugging Face model directory, loaded.

    Attributes:
      directory: Where it was read from.
      config: The parsed ``config.json``.
      tensors: Tensor name to array (memory-mapped, read-only).
    """

    directory: pathlib.Path
    config: dict[str, Any]
    tensors: Mapping[str, np.ndarray]

    @property
    def weights_description(self) -> str:
        """The weight file(s), for error messages."""
        index = self.directory / WEIGHTS_INDEX_FILE
        return str(index if index.exists() else self.directory / WEIGHTS_FILE)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face model directory."""
    directory = _existing_directory(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{path} does not exist; a Hugging Face model directory needs config.json "
            "(save the model with save_pretrained)."
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); re-save the model's config.") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} must hold a JSON object, found {type(config).__name__}.")
    return config


def read_checkpoint(directory: str | os.PathLike) -> HfCheckpoint:
    """Reads ``config.json`` and every tensor of a Hugging Face model directory."""
    directory = _existing_directory(directory)
    config = read_config(directory)
    return HfCheckpoint(directory=directory, config=config, tensors=_read_tensors(directory))


def write_checkpoint(directory: str | os.PathLike, config: Mapping[str, Any],
                     tensors: Mapping[str, np.ndarray]) -> None:
    """Writes ``config.json`` and one ``model.safetensors`` into `directory`.

    The safetensors header carries ``format: pt``: the arrays follow PyTorch's
    layout conventions, and transformers refuses files without a format tag.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    contiguous = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    safetensors_numpy.save_file(contiguous, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")


def _existing_directory(directory: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(directory)
    if not path.is_dir():
        raise UserError(
            f"Hugging Face model directory {path} does not exist or is not a directory; "
            "pass the folder that holds config.json and model.safetensors."
        )
    return path


def _read_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
    single = directory / WEIGHTS_FILE
    index = directory / WEIGHTS_INDEX_FILE
    if single.is_file():
        return dict(safetensors_numpy.load_file(str(single)))
    if index.is_file():
        return _read_sharded(directory, index)
    raise _no_weights(directory)


def _no_weights(directory: pathlib.Path) -> UserError:
    others = sorted(path.name for path in directory.iterdir()
                    if path.suffix in (".bin", ".pt", ".h5", ".msgpack"))
    hint = (f" It has {', '.join(others)}: re-save the model with "
            "save_pretrained(dir, safe_serialization=True)." if others else "")
    return UserError(f"{directory} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}.{hint}")


def _read_sharded(directory: pathlib.Path, index: pathlib.Path) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for path in sorted(set(_shard_of_tensor(directory, index).values())):
        tensors.update(safetensors_numpy.load_file(str(path)))
    return tensors


def tensor_files(directory: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Tensor name -> the safetensors file holding it, without reading any tensor.

    One ``model.safetensors`` (its header lists the names), or the shards of
    ``model.safetensors.index.json``.
    """
    directory = _existing_directory(directory)
    single = directory / WEIGHTS_FILE
    index = directory / WEIGHTS_INDEX_FILE
    if single.is_file():
        with safetensors.safe_open(str(single), framework="numpy") as file:
            return {name: single for name in file.keys()}
    if index.is_file():
        return _shard_of_tensor(directory, index)
    raise _no_weights(directory)


def _shard_of_tensor(directory: pathlib.Path, index: pathlib.Path) -> dict[str, pathlib.Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: directory / shard for name, shard in weight_map.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise UserError(
            f"{index} is not a safetensors index (a JSON object with 'weight_map')."
        ) from None
    for path in sorted(set(files.values())):
        if not path.is_file():
            raise UserError(f"{index} names shard {path.name}, which is not in {directory}; "
                            "copy every shard of the checkpoint.")
    return files
