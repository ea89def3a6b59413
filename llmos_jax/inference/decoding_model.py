"""Prefill and one-token steps for each architecture kind, behind one small interface.

The decoding loops (greedy/sampling and beam search) only call `prefill`
once and `step` per token; this module knows how a decoder-only model
(left-padded prompts, positions per row) and an encoder-decoder (encoder run
once, cross-attention keys and values cached) do those. It also unstacks
scanned layer parameters once, before the loop, so every step reads each
layer's weights in place.

Which adapter a model gets is decided by its family's `ArchitectureKind`
(`llmos_jax.models.families`), in the one table `ADAPTERS`: any registered
family of a kind decodes with that kind's adapter, with no edit here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.inference.kv_cache import KVCache, empty_cache
from llmos_jax.models.families import ArchitectureKind, family_of

Params = Any


class DecodingModel(Protocol):
    """What the decoding loops need from a model."""

    vocab_size: int

    def prefill(self, prompt: jax.Array, prompt_valid: jax.Array,
                slots: int) -> tuple[jax.Array, KVCache]:
        """Logits [rows, vocab] for the first new token, and the filled cache."""

    def step(self, tokens: jax.Array, cache: KVCache,
             index: jax.Array) -> tuple[jax.Array, KVCache]:
        """Logits [rows, vocab] after `tokens` [rows] written at slot `index`."""


@dataclasses.dataclass(frozen=True)
class DecoderOnly:
    """A decoder-kind model (`DecoderLM`) decoding left-padded prompts: all rows write one slot.

    The model provides `extend(tokens, positions=, keys=, values=,
    write_index=, key_valid=)`, `logits(hidden)`, `config` and `shard`.

    A row's position at slot s is s minus its padding, so learned positions
    and RoPE see 0, 1, 2, ... from the row's first real token (as
    Hugging Face derives `position_ids` from the attention mask).
    """

    model: nnx.Module

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def prefill(self, prompt, prompt_valid, slots):
        config = self.model.config
        rows, length = prompt.shape
        key_valid = jnp.concatenate(
            [prompt_valid, jnp.ones((rows, slots - length), bool)], axis=1)
        cache = empty_cache(config.num_layers, rows, slots, config.num_kv_heads,
                            config.head_dim, config.compute_dtype, key_valid, self.model.shard)
        positions = jnp.maximum(jnp.cumsum(prompt_valid, axis=1) - 1, 0).astype(jnp.int32)
        hidden, keys, values = self.model.extend(
            prompt, positions=positions, keys=cache.keys, values=cache.values,
            write_index=jnp.int32(0), key_valid=key_valid)
        logits = self.model.logits(hidden[:, -1:])[:, 0]
        return logits, dataclasses.replace(cache, keys=keys, values=values)

    def step(self, tokens, cache, index):
        padding = jnp.argmax(cache.key_valid, axis=1).astype(jnp.int32)  # first real slot
        positions = (index - padding)[:, None]
        hidden, keys, values = self.model.extend(
            tokens[:, None], positions=positions, keys=cache.keys, values=cache.values,
            write_index=index, key_valid=cache.key_valid)
        logits = self.model.logits(hidden)[:, 0]
        return logits, dataclasses.replace(cache, keys=keys, values=values)


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
    """An encoder-decoder-kind model (`EncoderDecoderLM`): the prompt is the encoder input.

    Prefill encodes the (right-padded) prompt, computes every layer's cross-attention keys and
    values, and runs the decoder start token at slot 0.
    """

    model: nnx.Module
    decoder_start_id: int

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def prefill(self, prompt, prompt_valid, slots):
        config, model = self.model.config, self.model
        rows = prompt.shape[0]
        encoded = model.encode(prompt, segment_ids=prompt_valid.astype(jnp.int32))
        cross_keys, cross_values = model.cross_keys_values(encoded)
        cache = empty_cache(config.num_decoder_layers, rows, slots, config.num_kv_heads,
                            config.head_dim, config.compute_dtype, jnp.ones((rows, slots), bool),
                            model.shard)
        cache = dataclasses.replace(cache, cross_keys=cross_keys, cross_values=cross_values,
                                    encoder_valid=prompt_valid)
        start = jnp.full((rows,), self.decoder_start_id, jnp.int32)
        return self.step(start, cache, jnp.int32(0))

    def step(self, tokens, cache, index):
        hidden, keys, values = self.model.extend_decoder(
            tokens[:, None], keys=cache.keys, values=cache.values, cross_keys=cache.cross_keys,
            cross_values=cache.cross_values, write_index=index,
            encoder_valid=cache.encoder_valid)
        logits = self.model.logits(hidden)[:, 0]
        return logits, dataclasses.replace(cache, keys=keys, values=values)


# How each architecture kind decodes: (model, decoder_start_id) -> adapter.
ADAPTERS: dict[ArchitectureKind, Callable[[nnx.Module, int], DecodingModel]] = {
    ArchitectureKind.DECODER: lambda model, decoder_start_id: DecoderOnly(model),
    ArchitectureKind.ENCODER_DECODER: EncoderDecoder,
}


def require_generation(model: nnx.Module) -> None:
    """Refuses, before any work, a model whose family's kind has no decoding adapter.

    Raises:
      UserError: the family's kind cannot generate (encoders), or no family is registered.
    """
    family = family_of(model)
    if family.kind not in ADAPTERS:
        raise UserError(f"{type(model).__name__} (model family {family.name!r}, a "
                        f"{family.kind.value}) cannot generate text; decode a decoder or "
                        "encoder-decoder model.")


def decoding_adapter(model: nnx.Module, decoder_start_id: int) -> DecodingModel:
    """The `DecodingModel` for `model`, chosen by its family's architecture kind."""
    require_generation(model)
    return ADAPTERS[family_of(model).kind](model, decoder_start_id)


def is_encoder_decoder(model: nnx.Module) -> bool:
    """Whether `model`'s family reads its prompt as an encoder input."""
    return family_of(model).kind is ArchitectureKind.ENCODER_DECODER


@functools.lru_cache(maxsize=32)
def unstacked_structure(model_type: type, config, shard) -> tuple[nnx.GraphDef, Params]:
    """Graph and abstract parameters of the same model built with `scan_layers=False`."""
    config = dataclasses.replace(config, scan_layers=False)
    abstract = nnx.eval_shape(lambda: model_type(config, rngs=nnx.Rngs(0), shard=shard))
    graphdef, state = nnx.split(abstract)
    return graphdef, nnx.to_pure_dict(state)


def unstack_params(stacked: Params, unstacked_abstract: Params) -> Params:
    """Stacked layer parameters ([layers, ...] leaves) split into per-layer subtrees.

    Subtrees that are per-layer dicts (`{0: ..., 1: ...}`) in
    `unstacked_abstract` but not in `stacked` are sliced; the rest is kept.
    """
    if not isinstance(unstacked_abstract, dict):
        return stacked
    out = {}
    for name, target in unstacked_abstract.items():
        source = stacked[name]
        per_layer = (isinstance(target, dict) and target and all(isinstance(k, int) for k in target)
                     and not (isinstance(source, dict) and all(isinstance(k, int) for k in source)))
        if per_layer:
            out[name] = {i: jax.tree.map(lambda a, i=i: a[i], source) for i in target}
        else:
            out[name] = unstack_params(source, target)
    return out


def with_unstacked_layers(model: nnx.Module, params: Params | None = None) -> nnx.Module:
    """`model` (with `params`, a pure dict, if given) as a module with per-layer blocks.

    What the decoding methods (`DecoderLM.extend`, `EncoderDecoderLM.extend_decoder`)
    need; a model without scanned layers is returned as is (or merged with `params`).
    """
    graphdef = nnx.graphdef(model)
    if params is None:
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if not model.config.scan_layers:
        return nnx.merge(graphdef, params)
    graphdef, abstract = unstacked_structure(type(model), model.config, model.shard)
    return nnx.merge(graphdef, unstack_params(params, abstract))
