"""Import or export any supported Hugging Face family, chosen by ``model_type``.

``config.json``'s ``model_type`` names the architecture (``"gpt2"``,
``"bert"``, ``"t5"``, ...). Each supported family registers its importer and
exporter here; anything else is refused with the list of supported types.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from llmos_jax.convert import bert, gpt2, hf_checkpoint, t5
from llmos_jax.errors import UserError

IMPORTERS: dict[str, Callable[..., nnx.Module]] = {
    gpt2.MODEL_TYPE: gpt2.import_gpt2, bert.MODEL_TYPE: bert.import_bert, t5.MODEL_TYPE: t5.import_t5,
}
EXPORTERS: dict[str, Callable[..., None]] = {
    gpt2.MODEL_TYPE: gpt2.export_gpt2, bert.MODEL_TYPE: bert.export_bert, t5.MODEL_TYPE: t5.export_t5,
}


def supported_model_types() -> tuple[str, ...]:
    """The ``model_type`` values that can be imported."""
    return tuple(sorted(IMPORTERS))


def import_hf_model(directory: str | os.PathLike, **overrides: Any) -> nnx.Module:
    """Our model with the weights of a Hugging Face model directory.

    Args:
      directory: Holds ``config.json`` and ``model.safetensors``.
      **overrides: Non-shape config fields for our model (e.g.
        ``scan_layers=False``), passed to the family's importer.
    """
    model_type = hf_checkpoint.read_config(directory).get("model_type")
    if model_type not in IMPORTERS:
        raise UserError(
            f"{os.path.join(directory, hf_checkpoint.CONFIG_FILE)} has model_type={model_type!r}, "
            f"which cannot be imported; supported model types: {', '.join(supported_model_types())}."
        )
    return IMPORTERS[model_type](directory, **overrides)


def export_hf_model(model: nnx.Module, directory: str | os.PathLike, *, model_type: str,
                    extra_config: Mapping[str, Any] | None = None) -> None:
    """Writes `model` as a Hugging Face directory of the given ``model_type``."""
    if model_type not in EXPORTERS:
        raise UserError(
            f"model_type={model_type!r} cannot be exported; supported model types: "
            f"{', '.join(sorted(EXPORTERS))}."
        )
    EXPORTERS[model_type](model, directory, extra_config=extra_config)
