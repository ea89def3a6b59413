"""Import or export any supported Hugging Face family, chosen by ``model_type``.

``config.json``'s ``model_type`` names the architecture (``"gpt2"``,
``"bert"``, ``"t5"``, ...). `CONVERTERS` is the one table of supported types:
each names the model family (`llmos_jax.models.families`) it imports into
and exports from, so an export can find its ``model_type`` from the model
alone and a model of another family is refused before any file is written.
Anything else is refused with the list of supported types.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flax import nnx

from llmos_jax.convert import bert, gpt2, hf_checkpoint, llama, t5
from llmos_jax.errors import UserError
from llmos_jax.models import families

if TYPE_CHECKING:  # its module imports TensorFlow (seqio); converting does not need it
    from llmos_jax.data.hf_tokenizer_vocab import HfTokenizerVocabulary


@dataclasses.dataclass(frozen=True)
class HfConverter:
    """One Hugging Face ``model_type`` and the model family it converts to and from.

    Attributes:
      model_type: ``config.json``'s ``model_type``.
      family: Name of the `llmos_jax.models.families.ModelFamily` it maps to.
      import_model: ``(directory, **overrides) -> model``.
      export_model: ``(model, directory, *, extra_config) -> None``.
      writes: ``(model config) -> bool``: whether this type can express the
        config; picks the type when a family has several and none is named.
    """

    model_type: str
    family: str
    import_model: Callable[..., nnx.Module]
    export_model: Callable[..., None]
    writes: Callable[[Any], bool] = lambda config: True


CONVERTERS: dict[str, HfConverter] = {c.model_type: c for c in (
    HfConverter(gpt2.MODEL_TYPE, families.DECODER.name, gpt2.import_gpt2, gpt2.export_gpt2),
    HfConverter(bert.MODEL_TYPE, families.BERT.name, bert.import_bert, bert.export_bert),
    HfConverter(t5.MODEL_TYPE, families.T5.name, t5.import_t5, t5.export_t5),
    *(HfConverter(model_type, families.DECODER.name, llama.import_llama,
                  llama.exporter(model_type),
                  writes=lambda config, model_type=model_type:
                      llama.export_problem(config, model_type) is None)
      for model_type in llama.MODEL_TYPES),
)}
# GPT-2 writes what no Llama-style type does (learned positions, LayerNorm).
CONVERTERS[gpt2.MODEL_TYPE] = dataclasses.replace(
    CONVERTERS[gpt2.MODEL_TYPE], writes=lambda config: config.position_embedding == "learned")


def supported_model_types() -> tuple[str, ...]:
    """The ``model_type`` values that can be imported and exported."""
    return tuple(sorted(CONVERTERS))


def import_hf_model(directory: str | os.PathLike, **overrides: Any) -> nnx.Module:
    """Our model with the weights of a Hugging Face model directory.

    Args:
      directory: Holds ``config.json`` and ``model.safetensors``.
      **overrides: Non-shape config fields for our model (e.g.
        ``scan_layers=False``), passed to the family's importer.
    """
    model_type = hf_checkpoint.read_config(directory).get("model_type")
    if model_type not in CONVERTERS:
        raise UserError(
            f"{os.path.join(directory, hf_checkpoint.CONFIG_FILE)} has model_type={model_type!r}, "
            f"which cannot be imported; supported model types: {', '.join(supported_model_types())}."
        )
    return CONVERTERS[model_type].import_model(directory, **overrides)


def export_hf_model(model: nnx.Module, directory: str | os.PathLike, *,
                    model_type: str | None = None,
                    extra_config: Mapping[str, Any] | None = None,
                    tokenizer: HfTokenizerVocabulary | None = None) -> None:
    """Writes `model` as a Hugging Face directory of ``model_type``.

    Args:
      model: The model to write.
      directory: Created if absent; config.json and the weights are overwritten.
      model_type: The Hugging Face ``model_type``; None: the one converter of
        the model's family.
      extra_config: Fields added to config.json last (e.g. tokenizer ids).
      tokenizer: The model's Hugging Face tokenizer: written beside the
        weights (``transformers.AutoTokenizer`` loads the folder), and its
        BOS/EOS ids go into config.json unless `extra_config` sets them.

    Raises:
      UserError: an unsupported ``model_type``, or one of another family than the model's.
    """
    family = families.family_of(model)
    own = [c.model_type for c in CONVERTERS.values() if c.family == family.name]
    if model_type is None and len(own) > 1:  # the first type (table order) that can write it
        own = [t for t in own if CONVERTERS[t].writes(model.config)][:1] or own
    if model_type is None:
        if len(own) != 1:
            raise UserError(
                f"{type(model).__name__} is of model family {family.name!r}, which has "
                f"{len(own)} Hugging Face converters ({', '.join(own) or 'none'}); pass "
                f"model_type= one of: {', '.join(supported_model_types())}.")
        model_type = own[0]
    if model_type not in CONVERTERS:
        raise UserError(
            f"model_type={model_type!r} cannot be exported; supported model types: "
            f"{', '.join(supported_model_types())}."
        )
    converter = CONVERTERS[model_type]
    if converter.family != family.name:
        raise UserError(
            f"model_type={model_type!r} exports model family {converter.family!r}, but "
            f"{type(model).__name__} is of family {family.name!r}; pass the model_type of its "
            f"family ({', '.join(own) or 'none'}).")
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
        extra_config = {**{k: v for k, v in ids.items() if v is not None}, **(extra_config or {})}
    converter.export_model(model, directory, extra_config=extra_config)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
