"""What `llmos serve --model=PATH` loads: a `ServedModel` from an export, a run or an HF folder.

`PATH` may be:

1. **An export** (`model_dir/export`, `model_dir/best`, or a copy of one):
   `params/` and `meta.json`. Since exports are self-contained
   (`training.self_contained_export`), `meta.json` gives the model config
   and family and the vocabulary manifest, and `vocabulary/` the files: no
   gin file and no seqio Task are read.
2. **A run's model_dir**: its `export/` (the finished run) when present, else
   its `best/` (the best evaluation). Pass `model_dir/best` to prefer the
   best step. Checkpoints alone are not served: they carry no vocabulary
   (a finished run writes `export/`).
3. **A Hugging Face folder**: `config.json` and `model.safetensors`, converted
   by `llmos_jax.convert` (GPT-2, Llama, Mistral, Qwen2, Gemma, T5), with `tokenizer.json`
   (`tokenizers`) and the chat template of `chat_template.jinja` or
   `tokenizer_config.json`.

`--chat-template=FILE` replaces the folder's own template (an export may
carry one as `chat_template.jinja` too).

Parameters are laid out by `partitioning.Layout` with the project's
logical-axis rules on a mesh `(data=1, fsdp=1, tensor=N)` over this host's
first N devices (`tensor_parallel=N`): heads, MLP and vocabulary split over
N devices, so a model too large for one device serves from one host. The
serving engine runs such a model as is.

Every failure is a `UserError` naming the path and what to pass instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from llmos_jax.checkpoints.checkpointer import first_shape_mismatch
from llmos_jax.compression.int8 import parameter_bytes, quantize_int8
from llmos_jax.checkpoints.exports import check_export
from llmos_jax.checkpoints.locations import EXPORT_DIRNAMES
from llmos_jax.checkpoints.params_reader import flat_params, read_our_params
from llmos_jax.data.vocabulary_files import MANIFEST_KEY, read_vocabularies
from llmos_jax.errors import UserError
from llmos_jax.inference.decoding_model import ADAPTERS, with_unstacked_layers
from llmos_jax.models.families import (ArchitectureKind, ModelFamily, families, family_of,
                                       get_family)
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.partitioning import DEFAULT_RULES, Layout, MeshConfig
from llmos_jax.serving.chat_template import ChatTemplate, folder_chat_template, read_chat_template
from llmos_jax.serving.lora_source import LORA_FLAG, with_adapters
from llmos_jax.serving.served_model import ServedModel, TextTokenizer
from llmos_jax.serving.tokenizer import (HfTokenizer, VocabularyTokenizer, load_hf_tokenizer,
                                         read_tokenizer_config, special_token_text)

log = logging.getLogger("llmos_jax.serving")

__all__ = ["load_served_model", "serving_layout"]

MODEL_FLAG = "--model"
TENSOR_PARALLEL_FLAG = "--tensor-parallel"
QUANTIZE_FLAG = "--quantize"
HF_CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """What each source gives, before the settings common to all are applied."""

    model: nnx.Module
    family: ModelFamily
    tokenizer: TextTokenizer
    eos_id: int | None
    decoder_start_id: int
    append_eos_to_prompt: bool
    folder: pathlib.Path
    bos_token: str | None = None
    eos_token: str | None = None


def load_served_model(path: str | os.PathLike, *, name: str | None = None,
                      chat_template_file: str | os.PathLike | None = None,
                      devices: Sequence[jax.Device] | None = None, tensor_parallel: int = 1,
                      max_context: int | None = None,
                      quantize: str | None = None,
                      lora: Mapping[str, str | os.PathLike] | None = None) -> ServedModel:
    """Loads `path` (an export, a run's model_dir or a Hugging Face folder) for serving.

    Args:
      path: See the module docstring.
      name: The model name clients send; default the run's (or folder's) name.
      chat_template_file: A Jinja2 chat template (`--chat-template`); replaces the
        model's own.
      devices: Devices to place the model on; default this host's.
      tensor_parallel: Split the model over this many of them (`--tensor-parallel`).
      max_context: Positions per sequence; default (and at most) the model's `max_len`.
      quantize: "int8" quantizes the weights after loading (`--quantize`, see
        `llmos_jax.compression.int8`); None serves them as stored.
      lora: LoRA adapters to serve over the model (`--lora NAME=PATH`): {name clients
        send as `model`: adapter folder} (see `serving.lora_source`).

    Raises:
      UserError: a missing folder, one that is no export, run or Hugging Face
        folder, missing parameters or vocabulary files, a family that does not
        generate, too few devices, or a template that does not compile.
    """
    folder = pathlib.Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise UserError(f"{MODEL_FLAG}={str(path)!r}: {folder} is not a directory; pass an "
                        "export (a run's model_dir/export), a run's model_dir, or a Hugging Face "
                        "model folder.")
    layout = serving_layout(tensor_parallel, devices)
    if (folder / "params").is_dir():
        loaded = _load_export(folder, layout)
    elif (folder / HF_CONFIG_FILE).is_file():
        loaded = _load_hf_folder(folder, layout)
    else:
        loaded = _load_export(_run_export(folder, path), layout)

    if chat_template_file is not None:
        template, origin = read_chat_template(chat_template_file), str(chat_template_file)
    else:
        template, origin = folder_chat_template(loaded.folder) or (None, "")
    if template is not None:  # Compiled now: a broken template stops the start, not a request.
        ChatTemplate(template, origin=origin, bos_token=loaded.bos_token,
                     eos_token=loaded.eos_token)

    model = loaded.model if quantize is None else quantized_for_serving(loaded.model, quantize)
    model_name = name or _default_name(loaded.folder)
    if model_name in (lora or {}):
        raise UserError(f"{LORA_FLAG}={model_name}=...: the adapter has the base model's name; "
                        "give it another name.")
    model = with_adapters(model, lora or {})
    config = model.config
    context = config.max_len if max_context is None else int(max_context)
    if not 2 <= context <= config.max_len:
        raise UserError(f"max_context={max_context} must be between 2 and the model's max_len "
                        f"({config.max_len}); leave it unset to use {config.max_len}.")
    log.info("serving %s (%s family) from %s on %d device(s), tensor=%d", model_name,
             loaded.family.name, loaded.folder, layout.mesh.size, layout.mesh.shape["tensor"])
    return ServedModel(
        name=model_name, model=model, tokenizer=loaded.tokenizer, max_context=context,
        eos_id=loaded.eos_id, decoder_start_id=loaded.decoder_start_id,
        encoder_decoder=loaded.family.kind is ArchitectureKind.ENCODER_DECODER,
        append_eos_to_prompt=loaded.append_eos_to_prompt, chat_template=template,
        source=str(loaded.folder), chat_template_origin=origin or "the chat template",
        bos_token=loaded.bos_token, eos_token=loaded.eos_token, family=loaded.family.name,
        adapters={adapter: str(path) for adapter, path in (lora or {}).items()})


def quantized_for_serving(model: nnx.Module, method: str) -> nnx.Module:
    """`model` with int8 weights; a generating model's layers unstacked (decoding reads
    them per layer).

    The quantized layers are not rebuilt from the config, so the stack is
    unstacked here once rather than by the slot programs or `DecodingEngine`.
    Encoders (classifiers) keep their stack. `llmos serve`, `llmos infer` and
    `llmos eval --quantize=int8` all quantize here.
    """
    if method != "int8":
        raise UserError(f"{QUANTIZE_FLAG}={method!r} is not supported; pass {QUANTIZE_FLAG}=int8 "
                        "or leave it out.")
    if family_of(model).kind in ADAPTERS:
        model = with_unstacked_layers(model)
    counts = quantize_int8(model)
    log.info("quantized to int8: %d dense layers, %d embedding tables; parameters now %.1f MB",
             counts["dense"], counts["embedding"],
             parameter_bytes(nnx.state(model, nnx.Param)) / 1e6)
    return model


def serving_layout(tensor_parallel: int = 1,
                   devices: Sequence[jax.Device] | None = None) -> Layout:
    """The layout a served model is placed with: `tensor_parallel` devices on the tensor axis.

    Raises:
      UserError: `tensor_parallel` is not positive or exceeds the devices.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if tensor_parallel < 1 or tensor_parallel > len(devices):
        raise UserError(f"{TENSOR_PARALLEL_FLAG}={tensor_parallel} must be between 1 and the "
                        f"number of devices to serve on ({len(devices)}); pass at most "
                        f"{TENSOR_PARALLEL_FLAG}={max(1, len(devices))}.")
    return Layout.build(MeshConfig(data=1, fsdp=1, tensor=tensor_parallel), DEFAULT_RULES,
                        devices[:tensor_parallel])


# -- our exports ---------------------------------------------------------------------


def _run_export(folder: pathlib.Path, given: str | os.PathLike) -> pathlib.Path:
    """A run's model_dir -> its export/ (else best/); refuses anything else."""
    for dirname in EXPORT_DIRNAMES:  # "export" (the finished run), then "best".
        if (folder / dirname / "params").is_dir():
            return folder / dirname
    if (folder / "checkpoints").is_dir():
        raise UserError(
            f"{MODEL_FLAG}={str(given)!r}: {folder} holds checkpoints but no export/ or best/; "
            "checkpoints carry no vocabulary, so they are not served. Finish the run (its last "
            "step writes export/; `llmos train --gin_file=MODEL_DIR/config.gin "
            "--model_dir=MODEL_DIR` of a finished run writes it without training), then pass "
            "the model_dir again.")
    raise UserError(f"{MODEL_FLAG}={str(given)!r}: {folder} is not an export (no params/), a "
                    f"run's model_dir (no export/ or best/) or a Hugging Face folder (no "
                    f"{HF_CONFIG_FILE}); pass one of those.")


def _load_export(folder: pathlib.Path, layout: Layout) -> _Loaded:
    check_export(folder, flag=MODEL_FLAG)  # checksums: a damaged export is refused, named
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise UserError(f"{folder} has params/ but no meta.json; it is not a complete export. "
                        "Copy the whole export folder, or re-export the run.")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{meta_file} is not valid JSON ({error}); re-export the run.") from None
    family, config = _export_config(meta, meta_file)
    manifest = meta.get(MANIFEST_KEY)
    if not manifest:
        raise UserError(
            f"{folder} carries no vocabulary (meta.json has no {MANIFEST_KEY!r}): it was written "
            "before exports were self-contained, or its task's vocabulary could not be written. "
            "Re-export it: `llmos train --gin_file=MODEL_DIR/config.gin --model_dir=MODEL_DIR` "
            "of a finished run writes export/ again without training.")
    if any((manifest.get(feature) or {}).get("kind") == "passthrough"
           for feature in ("inputs", "outputs")):
        raise UserError(f"{folder}'s vocabulary is of ids that are not text (a passthrough "
                        "vocabulary); only models trained on text are served.")
    vocabularies = read_vocabularies(folder, manifest)
    model = _place(family, config, read_our_params(str(folder)), layout, str(folder / "params"),
                   fix="re-export the run; meta.json's model_config must describe params/")
    eos = getattr(vocabularies.outputs, "eos_id", None)
    return _Loaded(model=model, family=family,
                   tokenizer=VocabularyTokenizer(vocabularies.outputs, inputs=vocabularies.inputs),
                   eos_id=None if eos is None else int(eos), decoder_start_id=0,
                   append_eos_to_prompt=vocabularies.inputs_add_eos, folder=folder)


def _export_config(meta: Mapping[str, Any], meta_file: pathlib.Path) -> tuple[ModelFamily, Any]:
    """The family and model config `meta.json` records."""
    saved = meta.get("model_config")
    if not isinstance(saved, Mapping):
        raise UserError(f"{meta_file} has no model_config; it is not an export written by "
                        "`llmos train`. Pass a run's export/ folder or a Hugging Face folder.")
    family_name = meta.get("model_family") or _family_by_fields(saved)
    family = get_family(family_name)
    if family.kind is ArchitectureKind.ENCODER:
        raise UserError(f"{meta_file.parent} holds a {family.name} model, an encoder that "
                        "classifies and does not generate text; serve a decoder or an "
                        "encoder-decoder model.")
    fields = {field.name for field in dataclasses.fields(family.config_class)}
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise UserError(f"{meta_file} model_config has fields {unknown} that this llmos's "
                        f"{family.config_class.__name__} lacks; serve it with the llmos "
                        "version that wrote it.")
    return family, family.config_class(**saved)


def _family_by_fields(saved: Mapping[str, Any]) -> str:
    """The family of an export written before meta.json named it: the registered config
    class with every saved field and the fewest others."""
    candidates = []
    for family in families():
        fields = {field.name for field in dataclasses.fields(family.config_class)}
        if set(saved) <= fields:
            candidates.append((len(fields - set(saved)), family.name))
    if not candidates:
        raise UserError(f"meta.json model_config fields {sorted(saved)} fit no registered "
                        "model family; serve it with the llmos version that wrote it.")
    return min(candidates)[1]


# -- Hugging Face folders ------------------------------------------------------------


def _load_hf_folder(folder: pathlib.Path, layout: Layout) -> _Loaded:
    # Here: convert needs safetensors, which serving our own exports does not.
    from llmos_jax.convert import hf_checkpoint
    from llmos_jax.convert.hf_models import CONVERTERS, supported_model_types

    hf_config = hf_checkpoint.read_config(folder)
    model_type = hf_config.get("model_type")
    if model_type not in CONVERTERS:
        raise UserError(f"{folder / HF_CONFIG_FILE} has model_type={model_type!r}, which llmos "
                        f"cannot serve; supported: {', '.join(supported_model_types())}.")
    family = get_family(CONVERTERS[model_type].family)
    if family.kind is ArchitectureKind.ENCODER:
        raise UserError(f"{folder} holds a {model_type} model, an encoder that does not "
                        "generate text; serve a decoder (gpt2) or an encoder-decoder (t5).")
    tokenizer = load_hf_tokenizer(folder)  # Before the weights: a missing file fails fast.
    # Converted on the host, then placed: the whole model never sits on one accelerator.
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        imported = CONVERTERS[model_type].import_model(folder)
    host = {name: np.asarray(value) for name, value in
            flat_params(nnx.to_pure_dict(nnx.state(imported, nnx.Param))).items()}
    model = _place(family, imported.config, host, layout, str(folder),
                   fix=f"check {HF_CONFIG_FILE} against the weights")
    tokenizer_config = read_tokenizer_config(folder)
    bos_token = special_token_text(tokenizer_config.get("bos_token"))
    eos_token = special_token_text(tokenizer_config.get("eos_token"))
    eos_id = _first_id(hf_config.get("eos_token_id"))
    if eos_id is None:
        eos_id = tokenizer.token_id(eos_token)
    start = _first_id(hf_config.get("decoder_start_token_id"))
    if start is None:
        start = _first_id(hf_config.get("pad_token_id")) or 0
    return _Loaded(model=model, family=family, tokenizer=tokenizer, eos_id=eos_id,
                   decoder_start_id=start, append_eos_to_prompt=False, folder=folder,
                   bos_token=bos_token or tokenizer.token_text(
                       _first_id(hf_config.get("bos_token_id"))),
                   eos_token=eos_token or tokenizer.token_text(eos_id))


def _first_id(value: Any) -> int | None:
    """A config.json token id (an int, or a list of them: the first)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else int(value)


# -- common ------------------------------------------------------------------------


def _place(family: ModelFamily, config: Any, host: Mapping[str, np.ndarray], layout: Layout,
           source: str, *, fix: str) -> nnx.Module:
    """`family`'s model for `config` holding `host`'s parameters, laid out by `layout`."""
    sharder = layout.activation_sharder
    spec = model_spec(lambda rngs: family.build(config, rngs=rngs, shard=sharder), seed=0)
    expected = flat_params(spec.abstract_params)
    mismatch = first_shape_mismatch({k: tuple(v.shape) for k, v in host.items()},
                                    {k: tuple(v.shape) for k, v in expected.items()})
    if mismatch:
        raise UserError(f"{source} does not fit its model config: {mismatch}; {fix}.")
    shardings = flat_params(layout.param_shardings(spec))
    placed = [jax.device_put(np.asarray(host[name]).astype(abstract.dtype, copy=False),
                             shardings[name])
              for name, abstract in expected.items()]
    return spec.merge(jax.tree.unflatten(jax.tree.structure(spec.abstract_params), placed))


def _default_name(folder: pathlib.Path) -> str:
    """The run's name for its export/ or best/, else the folder's."""
    return folder.parent.name if folder.name in EXPORT_DIRNAMES else folder.name
