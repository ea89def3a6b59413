"""Where PEFT puts LoRA weights, per family: one table each, from the family's own converter.

A PEFT LoRA adapter names each adapted module as the Hugging Face model
names it (``model.layers.0.self_attn.q_proj``). Which of our projections
that is, and how its kernel is laid out, is already in the family's checkpoint
table (`convert.gpt2`, `convert.bert`, `convert.t5`, `convert.llama`): every
per-layer rule that turns a ``<module>.weight`` into ``…/kernel`` parameters
is a place a LoRA adapter can sit. `lora_sites` reads those rules, so the
mapping is not written twice; `PEFT_LAYOUTS` adds only what PEFT itself needs
per family.

- GPT-2 (``DecoderLM``, learned positions): ``transformer.h.i.attn.c_attn``...;
  task ``CAUSAL_LM``.
- Llama, Mistral, Qwen2, Gemma (``DecoderLM``, RoPE): ``model.layers.i.self_attn.q_proj``,
  ``model.layers.i.mlp.gate_proj``...; ``CAUSAL_LM``.
- BERT: ``encoder.layer.i.attention.self.query``... for ``BertModel`` (our ``Encoder``),
  ``bert.encoder.layer.i...`` for ``BertFor*`` (our ``EncoderFor*``); ``FEATURE_EXTRACTION``.
- T5 (``EncoderDecoderLM``): ``encoder.block.i.layer.0.SelfAttention.q``,
  ``decoder.block.i.layer.1.EncDecAttention.q``...; ``SEQ_2_SEQ_LM``.

GPT-2's fused ``c_attn`` is one PEFT module for three of ours
(query/key/value): a site with several of our modules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from llmos_jax.convert import bert, gpt2, llama, t5
from llmos_jax.convert.tensor_mapping import LAYER, MappingTable
from llmos_jax.models import TransformerConfig
from llmos_jax.models.encoder import EncoderConfig
from llmos_jax.models.encoder_decoder import EncoderDecoderConfig

_WEIGHT, _KERNEL = ".weight", "kernel"


@dataclasses.dataclass(frozen=True)
class LoraSite:
    """One PEFT module (per layer) and the projection(s) of ours it is.

    Attributes:
      hf_module: PEFT's module name with ``{layer}``, e.g.
        ``encoder.layer.{layer}.attention.self.query``.
      our_modules: Our module paths with ``{layer}``, e.g.
        ``("layers/{layer}/attn/query",)``; several for a fused HF module, in
        the order of its output columns.
      in_shape: Our kernel's input axes (``lora_a`` is ``in_shape + (r,)``).
      out_shapes: Each of our kernels' output axes (``lora_b`` is ``(r,) + out``).
      num_layers: How many blocks the module repeats over.
    """

    hf_module: str
    our_modules: tuple[str, ...]
    in_shape: tuple[int, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    num_layers: int

    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.out_shapes)


@dataclasses.dataclass(frozen=True)
class PeftLayout:
    """What PEFT needs per family beyond the checkpoint tables.

    Attributes:
      family: Name in messages.
      task_type: PEFT's ``task_type`` written to ``adapter_config.json``.
      fan_in_fan_out: The HF modules store weights [in, out] (GPT-2's ``Conv1D``).
      tables: The family's checkpoint tables for a config; several when HF
        has several namings (``BertModel`` and ``BertFor*``). A module of
        ours in more than one is written with the first.
    """

    family: str
    task_type: str
    fan_in_fan_out: bool
    tables: Callable[[TransformerConfig], Sequence[MappingTable]]

    def sites(self, config: TransformerConfig) -> list[LoraSite]:
        return [site for table in self.tables(config) for site in lora_sites(table, self)]


PEFT_LAYOUTS: dict[str, PeftLayout] = {layout.family: layout for layout in (
    PeftLayout("GPT-2", "CAUSAL_LM", True, lambda config: (
        gpt2.mapping_table(config), gpt2.mapping_table(config, hf_prefix=""))),
    PeftLayout("Llama", "CAUSAL_LM", False, lambda config: (
        llama.mapping_table(config, "llama"),)),
    PeftLayout("BERT", "FEATURE_EXTRACTION", False, lambda config: (
        bert.mapping_table(config, pretraining=False),
        bert.mapping_table(config, pretraining=True))),
    PeftLayout("T5", "SEQ_2_SEQ_LM", False, lambda config: (t5.mapping_table(config),)),
)}


def layout_for(config: TransformerConfig) -> PeftLayout:
    """The family of a model config, as `convert.hf_models` tells them apart."""
    if isinstance(config, EncoderDecoderConfig):
        return PEFT_LAYOUTS["T5"]
    if isinstance(config, EncoderConfig):
        return PEFT_LAYOUTS["BERT"]
    return PEFT_LAYOUTS["GPT-2" if config.position_embedding == "learned" else "Llama"]


def lora_sites(table: MappingTable, layout: PeftLayout) -> list[LoraSite]:
    """Each per-layer ``<module>.weight`` -> ``…/kernel`` rule of `table`, as a LoRA site."""
    sites = []
    for rule in table.rules:
        kernels = [i for i, path in enumerate(rule.our_paths) if path[-1] == _KERNEL]
        weights = [i for i, key in enumerate(rule.hf_keys) if key.endswith(_WEIGHT)]
        if not rule.per_layer or not kernels or len(weights) != 1:
            continue
        weight_shape = rule.hf_shapes[weights[0]]
        in_size = weight_shape[0] if layout.fan_in_fan_out else weight_shape[-1]
        # Our kernels' shapes, from the rule itself (zero-stride one-byte inputs: what a
        # reshape copies is a quarter of the float32 tensor at most).
        ours = rule.to_ours(*(np.broadcast_to(np.uint8(0), shape) for shape in rule.hf_shapes))
        shapes = [tuple(ours[i].shape) for i in kernels]
        split = _input_axes(shapes[0], in_size)
        stack_key, num_layers = table.block_stack(rule)
        prefix = "/".join(str(part) for part in stack_key) + "/" + LAYER + "/"
        sites.append(LoraSite(
            hf_module=rule.hf_keys[weights[0]][:-len(_WEIGHT)],
            our_modules=tuple(prefix + "/".join(map(str, rule.our_paths[i][:-1]))
                              for i in kernels),
            in_shape=shapes[0][:split], out_shapes=tuple(shape[split:] for shape in shapes),
            num_layers=num_layers))
    return sites


def _input_axes(kernel_shape: tuple[int, ...], in_size: int) -> int:
    """How many leading axes of our kernel are its input (their product is `in_size`)."""
    for count in range(1, len(kernel_shape)):
        if math.prod(kernel_shape[:count]) == in_size:
            return count
    raise ValueError(f"kernel {kernel_shape} has no leading axes of {in_size} inputs")
