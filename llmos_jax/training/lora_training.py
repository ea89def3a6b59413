"""A LoRA fine-tune in the trainer: the adapted model's spec, its export and its adapter files.

`train.lora = @LoraConfig()` makes the trainer build the objective's model
with adapters (`lora_model_spec`), wrap the optimizer with
`compression.adapters.adapters_only`, export the merged weights (so the
export serves and evaluates like any other) and write the adapters alone to
`model_dir/adapters` at the end (`SaveAdapters`).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
from flax import nnx

from llmos_jax.compression.adapters import save_adapters
from llmos_jax.compression.lora import LoraConfig, apply_lora, merge_lora
from llmos_jax.models.config import TransformerConfig
from llmos_jax.objectives import Objective
from llmos_jax.objectives.model_building import ModelSpec, model_spec
from llmos_jax.partitioning import Layout
from llmos_jax.training.hooks import Schedule, StepContext

log = logging.getLogger("llmos_jax.train")


def lora_model_spec(model_config: TransformerConfig, objective: Objective, layout: Layout, lora: LoraConfig,
                    seed: int) -> ModelSpec:
    """`build_model_spec` with `lora`'s adapters added to the objective's model."""
    sharder = layout.activation_sharder

    def build(rngs: nnx.Rngs) -> nnx.Module:
        model = objective.build_model(model_config, rngs=rngs, shard=sharder)
        apply_lora(model, lora)
        return model

    return model_spec(build, seed)


def merged_params(spec: ModelSpec, params: Any) -> Any:
    """The base's parameter tree with every adapter folded into its kernel.

    Merged in a jitted program where the parameters live, so a run sharded over
    several hosts merges its shards in place (each host then writes its own).
    """
    def merge(params):
        model = spec.merge(params)
        merge_lora(model)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    return jax.jit(merge)(params)


class SaveAdapters:
    """Writes the adapters alone (safetensors + lora_config.json) when the run finishes."""

    schedule = Schedule(at_last=False)

    def __init__(self, directory: pathlib.Path, config: LoraConfig):
        self._directory, self._config = directory, config

    def on_step(self, context: StepContext) -> None:
        pass

    def on_end(self, context: StepContext) -> None:
        if context.finished and jax.process_index() == 0:
            size = save_adapters(self._directory, jax.device_get(context.state.params),
                                 self._config)
            log.info("adapters: %.2f MB in %s", size / 1e6, self._directory)
