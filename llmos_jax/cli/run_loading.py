"""A trained model ready to decode: built from a run's gin files, weights from its checkpoint.

`llmos infer` and `llmos eval` both start from the same three inputs (gin
files, gin bindings, a `--checkpoint` folder) and need the same things back:
the model built exactly as `llmos train` built it (`train.model_config`,
`train.objective`, mesh and rules), its parameters restored and placed on
that mesh, the task's vocabularies, and the metadata saved with the weights.
`load_for_inference` does all of it, and refuses before any weight is read
when the checkpoint's vocabulary is not the task's.

The model is built by `llmos_jax.objectives.model_building`, the code `train`
builds it with. `--checkpoint` may be a run's `model_dir` (its newest
checkpoint that verifies; damaged newer steps are skipped, never moved), its
`checkpoints/` folder, one step folder, a params-only export
(`model_dir/export`) or the best step's export (`model_dir/best`); a damaged
step or export given explicitly is refused (`checkpoints.locations`).

`DecodeConfig` is a gin configurable (registered with the training ones), so
gin files and `--gin.DecodeConfig.NAME=VALUE` flags set decoding;
`decode_config_from_gin` builds it, taking the vocabulary's EOS unless
`DecodeConfig.eos_id` is bound.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import seqio
from flax import nnx

from llmos_jax.checkpoints.locations import CheckpointLocation, find_checkpoint
from llmos_jax.checkpoints.params_reader import restore_params
from llmos_jax.data.vocabulary_files import (TaskVocabularies, describe_vocabulary,
                                             task_vocabularies)
from llmos_jax.errors import UserError
from llmos_jax.inference.decode_config import DecodeConfig, with_default_eos
from llmos_jax.inference.decoding_model import is_encoder_decoder

log = logging.getLogger("llmos_jax.inference")

def parse_run_gin(gin_files: Sequence[str], bindings: Sequence[str] = (), *,
                  model_dir: str | pathlib.Path | None = None, search_paths: Sequence[str] = (),
                  binding_sources: Sequence[str] | None = None,
                  extra_modules: Sequence[str] = ()) -> None:
    """Parses a run's gin files with the training configurables (and `DecodeConfig`) registered.

    `MODEL_DIR` is bound to `model_dir` first, as `llmos train` binds it, so
    files that use the macro parse; later bindings win.
    """
    from llmos_jax.cli import gin_config

    if not gin_files:
        raise UserError("no gin file given; pass the run's gin file with --gin_file (e.g. its "
                        "model_dir/config.gin).")
    bindings, sources = list(bindings), list(binding_sources or bindings)
    if model_dir is not None:
        bindings.insert(0, f"MODEL_DIR = {str(model_dir)!r}")
        sources.insert(0, "--checkpoint")
    gin_config.parse_gin(list(gin_files), bindings, list(search_paths), binding_sources=sources,
                         configurable_modules=(*gin_config.CONFIGURABLE_MODULES, *extra_modules))


def train_config():
    """The run's `TrainConfig`: `train.NAME` bindings of the parsed gin over its defaults.

    Raises:
      UserError: the gin files bind no `train.model_config` (not a run's gin file).
    """
    from llmos_jax.training.train_config import TrainConfig

    if "model_config" not in gin.get_bindings(TrainConfig.gin_selector()):
        raise UserError("the gin files bind no train.model_config; pass the run's gin file "
                        "(e.g. its model_dir/config.gin) with --gin_file.")
    return TrainConfig.from_gin()


def train_settings() -> dict[str, Any]:
    """`train_config()` by setting name (`sequence_length`, `eval_split`, ...)."""
    return train_config().as_dict()


def decode_config_from_gin(vocabulary: seqio.Vocabulary | None = None) -> DecodeConfig:
    """`DecodeConfig()` with the gin bindings; `eos_id` from `vocabulary` unless bound."""
    from llmos_jax.training import trainer  # noqa: F401 (registers DecodeConfig with gin)

    config = gin.get_configurable(DecodeConfig)()
    return with_default_eos(config, None if vocabulary is None else vocabulary.eos_id,
                            eos_bound="eos_id" in gin.get_bindings(DecodeConfig))


def check_vocabulary(meta: Mapping[str, Any], vocabularies: Sequence[seqio.Vocabulary], *,
                     checkpoint: str, source: str) -> None:
    """Refuses weights trained with a vocabulary other than the one that would encode or decode.

    Args:
      meta: The checkpoint's metadata (its `vocabulary` entry, if any, is compared).
      vocabularies: The vocabularies that will be used with the weights.
      checkpoint: The `--checkpoint` value, for the message.
      source: What chose the vocabularies, e.g. "task 'tiny_shakespeare_char'".

    Raises:
      UserError: naming both vocabularies.
    """
    saved = meta.get("vocabulary")
    if saved is None:
        log.warning("%s has no vocabulary record; cannot check it matches %s", checkpoint, source)
        return
    for vocabulary in vocabularies:
        current = describe_vocabulary(vocabulary)
        if current != saved:
            raise UserError(
                f"--checkpoint={checkpoint!r} was trained with vocabulary {saved} but {source} "
                f"uses {current}; use the task (gin file) the checkpoint was trained with, or "
                "the checkpoint trained for this task.")


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """A restored model and everything needed to feed it.

    Attributes:
      model: The module, holding the restored (sharded) parameters.
      params: The same parameters as a pure dict, for `generate`/`score`.
      objective: The training objective that built the model.
      task_name: The task whose vocabularies are in `vocabularies`.
      provider: That Task or Mixture.
      vocabularies: Encode prompts / decode outputs.
      location: The checkpoint read, with its step and metadata.
      settings: The run's `TrainConfig` by setting name (sequence_length, ...).
      mesh: The mesh the parameters are laid out on.
    """

    model: nnx.Module
    params: Any
    objective: Any
    task_name: str
    provider: seqio.DatasetProviderBase
    vocabularies: TaskVocabularies
    location: CheckpointLocation
    settings: dict[str, Any]
    mesh: jax.sharding.Mesh

    @property
    def encoder_decoder(self) -> bool:
        return is_encoder_decoder(self.model)

    @property
    def first_task(self) -> seqio.Task:
        """The Task itself, or a Mixture's first Task (its features stand for all)."""
        tasks = getattr(self.provider, "tasks", None)
        return tasks[0] if tasks else self.provider


def load_for_inference(gin_files: Sequence[str], bindings: Sequence[str] = (), *,
                       checkpoint: str, task_name: str | None = None,
                       split: str | None = None, split_setting: str = "--split",
                       search_paths: Sequence[str] = (),
                       binding_sources: Sequence[str] | None = None,
                       devices: Sequence[jax.Device] | None = None,
                       parse: bool = True,
                       location: CheckpointLocation | None = None,
                       quantize: str | None = None) -> InferenceModel:
    """Parses the run's gin files, checks the vocabulary, builds the model and restores it.

    Args:
      gin_files: The run's gin files (e.g. its model_dir/config.gin).
      bindings: Gin statements applied after the files (e.g. from `--gin.` flags).
      checkpoint: A model_dir, its checkpoints/ folder, or an export folder.
      task_name: The task whose vocabulary is used (default `train.task_name`,
        else the task recorded with the checkpoint).
      split: When given, the task must have this split (checked before any
        weight is read).
      split_setting: The flag that gave `split`, for messages.
      search_paths: Extra folders for gin files.
      binding_sources: How each binding was given, for error messages.
      devices: Lay the mesh (`train.mesh_config`) over these devices; default
        this host's devices, so each host decodes its own requests.
      parse: False when the caller has already parsed gin.
      location: `find_checkpoint(checkpoint)`, when the caller has it already.
      quantize: "int8": quantize the restored weights as `llmos serve --quantize=int8`
        does (`serving.model_source.quantized_for_serving`); None: as stored.

    Raises:
      UserError: a missing checkpoint, task or split, a vocabulary mismatch
        (before any weight is read), or weights that do not fit the gin model.
    """
    from llmos_jax.data.providers import get_provider
    from llmos_jax.partitioning import Layout
    from llmos_jax.objectives.model_building import build_model_spec, resolve_objective

    location = location or find_checkpoint(checkpoint)
    if parse:
        parse_run_gin(gin_files, bindings, model_dir=location.model_dir,
                      search_paths=search_paths, binding_sources=binding_sources)
    settings = train_settings()
    setting = "--task"
    if task_name is None:
        setting = "train.task_name"
        task_name = settings["task_name"] or location.meta.get("data", {}).get("task_name")
    if not task_name:
        raise UserError("no task gives the vocabulary: the gin files bind no train.task_name and "
                        "the checkpoint records none; pass the run's gin file or --task.")
    provider = get_provider(task_name, split, setting=setting, split_setting=split_setting)
    vocabularies = task_vocabularies(provider)
    check_vocabulary(location.meta, [vocabularies.inputs, vocabularies.outputs],
                     checkpoint=checkpoint, source=f"task {task_name!r} ({setting})")

    model_config = settings["model_config"]
    _warn_on_config_drift(location.meta, model_config)
    objective = resolve_objective(settings["objective"])
    layout = Layout.build(settings["mesh_config"], settings["axis_rules"],
                          jax.local_devices() if devices is None else devices)
    lora = settings.get("lora")
    if lora is not None and location.params_key is not None:
        # A LoRA run's training checkpoints hold the adapters beside the frozen base
        # (its exports are merged already): build them in, restore, fold them in.
        from llmos_jax.training.lora_training import lora_model_spec

        spec = lora_model_spec(model_config, objective, layout, lora, settings["seed"])
    else:
        spec = build_model_spec(model_config, objective, layout, settings["seed"])
    params = restore_params(location, spec, layout.param_shardings(spec), checkpoint=checkpoint)
    model = nnx.merge(spec.graphdef, params)
    if lora is not None and location.params_key is not None:
        from llmos_jax.compression.lora import merge_lora

        merge_lora(model)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if quantize is not None:
        from llmos_jax.serving.model_source import quantized_for_serving

        model = quantized_for_serving(model, quantize)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return InferenceModel(model=model, params=params, objective=objective, task_name=task_name,
                          provider=provider, vocabularies=vocabularies, location=location,
                          settings=settings, mesh=layout.mesh)


def _warn_on_config_drift(meta: Mapping[str, Any], model_config) -> None:
    saved = meta.get("model_config")
    if not saved:
        return
    current = json.loads(json.dumps(dataclasses.asdict(model_config), default=str))
    saved = json.loads(json.dumps(saved, default=str))
    # A field added after the checkpoint was saved is no drift while it keeps its default.
    defaults = {field.name: field.default for field in dataclasses.fields(model_config)}
    defaults = json.loads(json.dumps(defaults, default=str))
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k, defaults.get(k)) != current.get(k))
    if changed:
        log.warning("the gin model config differs from the checkpoint's in %s; using the gin "
                    "file's values", ", ".join(changed))
