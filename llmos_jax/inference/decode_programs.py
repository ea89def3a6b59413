"""The compiled programs of one model graph: decoding, scoring and layer unstacking.

A `ModelPrograms` is made once per model graph (a `DecodingEngine` makes it,
and engines for new weights of the same graph share it). It compiles a
program ahead of time the first time it is asked for one with new static
settings or new argument shapes, dtypes or shardings, keeps it for as long
as it lives, and counts the compilations: repeated calls with the same
shapes compile nothing, and nothing is cached at module level, so two
models never share or evict each other's programs.

Programs:
- decode: prefill, then a `while_loop` over a preallocated KV cache
  (`sampling_loop` or `beam_search`), for one static `DecodeConfig` (the
  fields the host alone uses zeroed) and step bound;
- score: one teacher-forced forward pass giving each row's summed target
  log-probabilities and argmax hits;
- unstack: scanned layer parameters split into per-layer subtrees (done
  once per engine, so every decode step reads each layer's weights in place).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.inference.beam_search import beam_decode
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_model import (
    decoding_adapter,
    is_encoder_decoder,
    unstack_params,
    unstacked_structure,
)
from llmos_jax.inference.sampling_loop import sampling_decode

Params = Any


def arguments_key(tree: Any) -> Hashable:
    """What a compiled program depends on in its arguments: structure, shapes, dtypes, shardings."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (np.shape(leaf), np.dtype(getattr(leaf, "dtype", None) or np.result_type(leaf)).name,
         bool(getattr(leaf, "weak_type", False)),
         leaf.sharding if isinstance(leaf, jax.Array) else None) for leaf in leaves)


class ModelPrograms:
    """Compiled decode, score and unstack programs for one model graph.

    Args:
      model: The model (a `DecoderLM` or `EncoderDecoderLM`); only its graph,
        type, config and sharder are kept, not its weights.

    Attributes:
      compilations: Programs compiled so far (each new static setting or
        argument shape compiles once; a repeat compiles nothing).
    """

    def __init__(self, model: nnx.Module):
        self.graphdef = nnx.graphdef(model)
        self.config = model.config
        self.encoder_decoder = is_encoder_decoder(model)
        self.scan_layers = bool(model.config.scan_layers)
        self._model_type, self._shard = type(model), model.shard
        self._unstacked_graphdef: nnx.GraphDef | None = None
        self._unstacked_abstract: Params = None
        self._programs: dict[Hashable, jax.stages.Compiled] = {}
        self.compilations = 0

    def _call(self, key: Hashable, params_key: Hashable, build: Callable[[], Callable],
              params: Params, *arrays: np.ndarray):
        """Runs the program `key` on the arguments, compiling it first if it is new for them."""
        full_key = (key, params_key, arguments_key(arrays))
        program = self._programs.get(full_key)
        if program is None:
            program = jax.jit(build()).lower(params, *arrays).compile()
            self._programs[full_key] = program
            self.compilations += 1
        return program(params, *arrays)

    def decoding_params(self, params: Params, params_key: Hashable) -> Params:
        """`params` laid out for decoding: scanned layers unstacked (one program run)."""
        if not self.scan_layers:
            return params
        if self._unstacked_graphdef is None:
            self._unstacked_graphdef, self._unstacked_abstract = unstacked_structure(
                self._model_type, self.config, self._shard)
        abstract = self._unstacked_abstract
        return self._call(("unstack",), params_key,
                          lambda: lambda p: unstack_params(p, abstract), params)

    def decode(self, config: DecodeConfig, num_steps: int, params: Params,
               params_key: Hashable, *arrays: np.ndarray) -> dict[str, jax.Array]:
        """Runs the decode program for `config` (host-only fields zeroed) and `num_steps`.

        `params` come from `decoding_params`; `arrays` are prefix,
        prefix_valid, prompt, prompt_valid, budgets, seeds and sample_index.
        """
        graphdef = self._unstacked_graphdef if self.scan_layers else self.graphdef
        return self._call(("decode", config, num_steps), params_key,
                          lambda: _decode_program(graphdef, config, num_steps), params, *arrays)

    def score(self, encoder_decoder: bool, params: Params, params_key: Hashable,
              *arrays: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """Per-row (summed target log-probability, argmax hits) of one padded batch.

        `arrays`: encoder, encoder_valid, decoder, labels, weights for an
        encoder-decoder; inputs, labels, weights for a decoder.
        """
        build = _encoder_decoder_score if encoder_decoder else _decoder_score
        return self._call(("score",), params_key, lambda: build(self.graphdef), params, *arrays)


def _decode_program(graphdef: nnx.GraphDef, config: DecodeConfig, num_steps: int) -> Callable:

    def run(params, prefix, prefix_valid, prompt, prompt_valid, budgets, seeds, sample_index):
        model = nnx.merge(graphdef, params)
        adapter = decoding_adapter(model, config.decoder_start_id)
        if config.method == "beam":
            out = beam_decode(adapter, prefix, prefix_valid, prompt, prompt_valid, budgets,
                              config, num_steps)
            return {"tokens": out.tokens, "scores": out.scores, "lengths": out.lengths,
                    "finish": out.finish}
        row_keys = None
        if config.method == "sample":
            row_keys = jax.vmap(lambda s, j: jax.random.fold_in(jax.random.key(s), j))(
                seeds, sample_index)
        out = sampling_decode(adapter, prefix, prefix_valid, prompt, prompt_valid, budgets,
                              row_keys, config, num_steps)
        return {"tokens": out.tokens, "generated": out.generated, "finish": out.finish,
                "log_likelihood": out.log_likelihood}

    return run


def _target_log_likelihood(logits, labels, weights):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(picked * weights, axis=-1), jnp.sum(hits * weights, axis=-1)


def _decoder_score(graphdef: nnx.GraphDef) -> Callable:
    def run(params, inputs, labels, weights):
        logits = nnx.merge(graphdef, params)(inputs)
        return _target_log_likelihood(logits, labels, weights)
    return run


def _encoder_decoder_score(graphdef: nnx.GraphDef) -> Callable:
    def run(params, encoder, encoder_valid, decoder, labels, weights):
        logits = nnx.merge(graphdef, params)(encoder, decoder, encoder_segment_ids=encoder_valid)
        return _target_log_likelihood(logits, labels, weights)
    return run
