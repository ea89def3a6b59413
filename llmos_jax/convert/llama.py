"""Llama-style checkpoints (Llama, Mistral, Qwen2, Gemma 1) <-> our ``DecoderLM``.

The four share one tensor layout (``model.`` + below) and differ in a few
switches that ``TransformerConfig`` expresses:

==============  ===============================================================
``model_type``  what differs from Llama
==============  ===============================================================
``llama``       RoPE scaling ``linear`` or ``llama3``; optional attention/MLP biases
``mistral``     ``sliding_window`` (``sliding_window``)
``qwen2``       biases on q, k, v only (``qkv_bias``)
``gemma``       embeddings times sqrt(hidden) (``scale_embeddings``), RMSNorm
                scales stored as ``w`` for ``1 + w``, tanh-GELU gated MLP,
                tied embeddings
==============  ===============================================================

========================================  ===========================================
HF tensor (``model.`` +)                  our parameter (per block: ``layers/…``)
========================================  ===========================================
``embed_tokens.weight`` [V, E]            ``token_embed/embedding``
``layers.i.input_layernorm.weight``       ``attn_norm/scale``
``layers.i.self_attn.q_proj`` [H*D, E]    ``attn/query`` [E, H, D] (k, v: KV heads)
``layers.i.self_attn.o_proj`` [E, H*D]    ``attn/out`` [H, D, E]
``layers.i.post_attention_layernorm``     ``mlp_norm/scale``
``layers.i.mlp.{gate,up}_proj`` [M, E]    ``mlp/{wi_gate,wi_up}`` [E, M]
``layers.i.mlp.down_proj`` [E, M]         ``mlp/wo`` [M, E]
``norm.weight``                           ``final_norm/scale``
``lm_head.weight`` [V, E]                 ``lm_head/kernel`` [E, V] (untied only)
========================================  ===========================================

Any ``config.json`` setting this mapping cannot reproduce exactly (another RoPE
scaling type, soft-capping, a Qwen2 sliding window, ...) is refused with the
field and its value named, never silently approximated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flax import nnx

from llmos_jax.convert import hf_checkpoint
from llmos_jax.convert.model_params import (abstract_model, apply_overrides, convert_into,
                                            converted_params, host_params)
from llmos_jax.convert.streaming_load import layout_shardings, stream_into
from llmos_jax.convert.tensor_mapping import (LAYER, MappingTable, TensorRule, bias_to_heads,
                                              heads_to_linear, linear_to_heads, renamed,
                                              transposed)
from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.partitioning import Layout

MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}
HF_PREFIX = "model."

# transformers' defaults per model_type: a config.json that omits a field means these.
_COMMON_DEFAULTS: dict[str, Any] = dict(
    num_key_value_heads=None, head_dim=None, hidden_act="silu", rms_norm_eps=1e-6,
    rope_theta=10_000.0, rope_scaling=None, rope_parameters=None, initializer_range=0.02,
    attention_bias=False, mlp_bias=False, attention_dropout=0.0,
)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                  tie_word_embeddings=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    max_position_embeddings=4096 * 32, tie_word_embeddings=False,
                    sliding_window=4096),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                  num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=32768,
                  tie_word_embeddings=False, use_sliding_window=False),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                  num_hidden_layers=28, num_attention_heads=16, head_dim=256,
                  max_position_embeddings=8192, tie_word_embeddings=True,
                  hidden_act="gelu_pytorch_tanh"),
}
# HF activation -> our gated activation. Gemma's legacy "gelu" means the tanh form.
_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu",
                "gelu_new": "geglu", "gelu_fast": "geglu"}
_ACTIVATIONS_TO_HF = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh"}
_ROPE_TYPES = ("default", "linear", "llama3")
# Set to anything but these values, these fields change the math: refused.
_MUST_BE = {"attn_logit_softcapping": None, "final_logit_softcapping": None,
            "partial_rotary_factor": 1.0, "use_bidirectional_attention": None,
            "query_pre_attn_scalar": None}
ARCHITECTURE_FIELDS = (
    "vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
    "max_len", "position_embedding", "rope_theta", "rope_scaling", "rope_scaling_factor",
    "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len", "norm",
    "norm_eps", "mlp_activation", "use_bias", "qkv_bias", "tie_embeddings", "sliding_window",
    "scale_embeddings",
)


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> TransformerConfig:
    """Our ``TransformerConfig`` for a Llama, Mistral, Qwen2 or Gemma ``config.json``.

    Args:
      hf_config: The parsed config.json.
      **overrides: Fields config.json does not fix (``scan_layers``, ``dtype``,
        ``param_dtype``, ``dropout_rate``, ...).

    Raises:
      UserError: another model_type, or a setting we cannot reproduce exactly,
        naming the field and its value.
    """
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(f"config.json model_type={model_type!r} is not one of "
                        f"{', '.join(MODEL_TYPES)}; use llmos_jax.convert.hf_models.")
    hf = {**_COMMON_DEFAULTS, **_DEFAULTS[model_type],
          **{k: v for k, v in hf_config.items() if v is not None or k in ("sliding_window",)}}
    for field, allowed in _MUST_BE.items():
        if hf_config.get(field, allowed) != allowed:
            raise _unsupported(field, hf_config[field], f"only {allowed!r} is supported")
    activation = hf.get("hidden_activation") or hf["hidden_act"]
    if model_type == "gemma" and activation == "gelu":
        activation = "gelu_pytorch_tanh"  # as transformers reads legacy Gemma configs
    if activation not in _ACTIVATIONS:
        raise _unsupported("hidden_act", activation, f"supported: {', '.join(_ACTIVATIONS)}")
    heads = hf["num_attention_heads"]
    fields: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
        embed_dim=hf["hidden_size"], num_heads=heads,
        num_kv_heads=hf["num_key_value_heads"] or heads,
        head_dim=hf["head_dim"] or hf["hidden_size"] // heads, mlp_dim=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"], position_embedding="rope", norm="rmsnorm",
        norm_eps=hf["rms_norm_eps"], mlp_activation=_ACTIVATIONS[activation],
        tie_embeddings=bool(hf["tie_word_embeddings"]), init_std=hf["initializer_range"],
        dropout_rate=hf["attention_dropout"], scale_embeddings=model_type == "gemma",
        **_biases(model_type, hf), **_rope(hf), **_window(model_type, hf),
    )
    return apply_overrides(TransformerConfig(**fields), overrides, ARCHITECTURE_FIELDS,
                           model_type)


def config_to_hf(config: TransformerConfig, model_type: str) -> dict[str, Any]:
    """A ``config.json`` of `model_type` for our config; raises if it cannot express it."""
    problem = export_problem(config, model_type)
    if problem:
        raise UserError(f"this model cannot be written as {model_type}: {problem}.")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling == "linear":
        rope.update(rope_type="linear", factor=config.rope_scaling_factor)
    elif config.rope_scaling == "llama3":
        rope.update(rope_type="llama3", factor=config.rope_scaling_factor,
                    low_freq_factor=config.rope_low_freq_factor,
                    high_freq_factor=config.rope_high_freq_factor,
                    original_max_position_embeddings=config.rope_original_max_len)
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": config.vocab_size, "hidden_size": config.embed_dim,
        "intermediate_size": config.mlp_dim, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_act": _ACTIVATIONS_TO_HF[config.mlp_activation],
        "max_position_embeddings": config.max_len, "rms_norm_eps": config.norm_eps,
        "initializer_range": config.init_std, "tie_word_embeddings": config.tie_embeddings,
        "attention_dropout": config.dropout_rate, "rope_parameters": rope,
        "dtype": config.param_dtype,
    }
    if model_type == "llama":
        hf.update(attention_bias=config.use_bias, mlp_bias=config.use_bias)
    elif model_type == "mistral":
        hf.update(sliding_window=config.sliding_window)
    elif model_type == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


def export_problem(config: TransformerConfig, model_type: str) -> str | None:
    """Why `config` cannot be written as `model_type`, or None when it can."""
    needs = [("position_embedding", "rope"), ("norm", "rmsnorm")]
    needs.append(("scale_embeddings", model_type == "gemma"))
    if model_type != "mistral":
        needs.append(("sliding_window", None))
    if model_type == "qwen2":
        needs += [("use_bias", False), ("qkv_biased", True)]
    else:
        needs.append(("qkv_biased", config.use_bias))
        if model_type != "llama":
            needs.append(("use_bias", False))
    if model_type in ("gemma",):
        needs += [("mlp_activation", "geglu"), ("tie_embeddings", True)]
    else:
        needs.append(("mlp_activation", "swiglu"))
    if model_type != "llama":
        needs.append(("rope_scaling", "none"))
    for field, value in needs:
        if getattr(config, field) != value:
            return f"it needs TransformerConfig.{field}={value!r}, not {getattr(config, field)!r}"
    return None


def mapping_table(config: TransformerConfig, model_type: str) -> MappingTable:
    """The tensor table of a Llama-style checkpoint for `config`."""
    vocab, embed, mlp = config.vocab_size, config.embed_dim, config.mlp_dim
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
    block = f"{HF_PREFIX}layers.{LAYER}."
    norm = _gemma_norm if model_type == "gemma" else renamed
    rules = [
        renamed(f"{HF_PREFIX}embed_tokens.weight", (vocab, embed), ("token_embed", "embedding")),
        norm(f"{block}input_layernorm.weight", (embed,), ("attn_norm", "scale")),
        linear_to_heads(f"{block}self_attn.q_proj.weight", embed, heads, head_dim,
                        ("attn", "query", "kernel")),
        linear_to_heads(f"{block}self_attn.k_proj.weight", embed, kv_heads, head_dim,
                        ("attn", "key", "kernel")),
        linear_to_heads(f"{block}self_attn.v_proj.weight", embed, kv_heads, head_dim,
                        ("attn", "value", "kernel")),
        heads_to_linear(f"{block}self_attn.o_proj.weight", embed, heads, head_dim,
                        ("attn", "out", "kernel")),
        norm(f"{block}post_attention_layernorm.weight", (embed,), ("mlp_norm", "scale")),
        transposed(f"{block}mlp.gate_proj.weight", (mlp, embed), ("mlp", "wi_gate", "kernel")),
        transposed(f"{block}mlp.up_proj.weight", (mlp, embed), ("mlp", "wi_up", "kernel")),
        transposed(f"{block}mlp.down_proj.weight", (embed, mlp), ("mlp", "wo", "kernel")),
        norm(f"{HF_PREFIX}norm.weight", (embed,), ("final_norm", "scale")),
    ]
    if config.qkv_biased:
        rules += [bias_to_heads(f"{block}self_attn.{name[0]}_proj.bias", count, head_dim,
                                ("attn", name, "bias"))
                  for name, count in (("query", heads), ("key", kv_heads), ("value", kv_heads))]
    if config.use_bias:
        rules += [renamed(f"{block}self_attn.o_proj.bias", (embed,), ("attn", "out", "bias")),
                  renamed(f"{block}mlp.gate_proj.bias", (mlp,), ("mlp", "wi_gate", "bias")),
                  renamed(f"{block}mlp.up_proj.bias", (mlp,), ("mlp", "wi_up", "bias")),
                  renamed(f"{block}mlp.down_proj.bias", (embed,), ("mlp", "wo", "bias"))]
    if not config.tie_embeddings:
        rules.append(transposed("lm_head.weight", (vocab, embed), ("lm_head", "kernel")))
    tied = config.tie_embeddings

    def ignored(key: str) -> bool:
        # Old checkpoints carry RoPE's inverse frequencies as a buffer; a tied
        # lm_head.weight is embed_tokens itself.
        return key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight")

    return MappingTable(
        family=model_type, rules=tuple(rules), num_layers=config.num_layers,
        stacked_layers=config.scan_layers, ignored_hf_key=ignored,
        config_summary=(f"num_hidden_layers={config.num_layers}, hidden_size={embed}, "
                        f"num_attention_heads={heads}, num_key_value_heads={kv_heads}, "
                        f"head_dim={head_dim}, intermediate_size={mlp}, vocab_size={vocab}, "
                        f"tie_word_embeddings={tied}"),
    )


def load_llama_params(checkpoint: hf_checkpoint.HfCheckpoint,
                      config: TransformerConfig) -> dict:
    """Our parameters for a checkpoint, as the nested pure dict of a ``DecoderLM(config)``."""
    return converted_params(_abstract_decoder(config),
                            mapping_table(config, checkpoint.config["model_type"]),
                            checkpoint.tensors, checkpoint.weights_description)


def import_llama(directory: str | os.PathLike, *, layout: Layout | None = None,
                 **overrides: Any) -> DecoderLM:
    """A ``DecoderLM`` with the weights of a Llama, Mistral, Qwen2 or Gemma directory.

    Tensors are streamed (`llmos_jax.convert.streaming_load`): read one at a
    time from their shard, converted and placed on their sharding, so the
    host never holds a second copy of the model.

    Args:
      directory: Holds ``config.json`` and ``model.safetensors`` (or shards
        with ``model.safetensors.index.json``).
      layout: Where the parameters go (each by its logical axes); None: the
        default device.
      **overrides: Fields config.json does not fix, e.g. ``scan_layers=False``.
    """
    hf_config = hf_checkpoint.read_config(directory)
    config = config_from_hf(hf_config, **overrides)
    abstract = _abstract_decoder(config)
    return stream_into(abstract, mapping_table(config, hf_config["model_type"]), directory,
                       layout_shardings(abstract, layout))


def import_llama_in_memory(directory: str | os.PathLike, **overrides: Any) -> DecoderLM:
    """`import_llama` without streaming: every tensor read, converted, then placed.

    Holds the checkpoint and its converted copy on the host at once; kept as
    the reference the streaming path is tested (and measured) against.
    """
    checkpoint = hf_checkpoint.read_checkpoint(directory)
    config = config_from_hf(checkpoint.config, **overrides)
    return convert_into(_abstract_decoder(config),
                        mapping_table(config, checkpoint.config["model_type"]),
                        checkpoint.tensors, checkpoint.weights_description)


def exporter(model_type: str):
    """``export(model, directory, *, extra_config)`` writing `model_type`."""

    def export(model: DecoderLM, directory: str | os.PathLike, *,
               extra_config: Mapping[str, Any] | None = None) -> None:
        hf_config = config_to_hf(model.config, model_type)
        hf_config.update(extra_config or {})
        tensors = mapping_table(model.config, model_type).params_to_hf_tensors(host_params(model))
        hf_checkpoint.write_checkpoint(directory, hf_config, tensors)

    export.__doc__ = f"Writes a DecoderLM as a {ARCHITECTURES[model_type]} directory."
    return export


def _biases(model_type: str, hf: Mapping[str, Any]) -> dict[str, bool]:
    if model_type == "qwen2":
        return dict(use_bias=False, qkv_bias=True)
    if model_type == "llama" and bool(hf["attention_bias"]) != bool(hf["mlp_bias"]):
        raise _unsupported("mlp_bias", hf["mlp_bias"],
                           f"supported only equal to attention_bias={hf['attention_bias']!r}")
    if model_type != "llama" and hf["attention_bias"]:
        raise _unsupported("attention_bias", hf["attention_bias"], "only false is supported")
    return dict(use_bias=bool(hf["attention_bias"]))


def _rope(hf: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE fields from transformers 5's ``rope_parameters`` or 4's ``rope_theta`` + ``rope_scaling``."""
    source = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    params = dict(hf.get("rope_scaling") or {})
    params.update(hf.get("rope_parameters") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise _unsupported(f"{source}.rope_type", rope_type,
                           f"supported: {', '.join(_ROPE_TYPES)}")
    fields: dict[str, Any] = dict(rope_theta=float(params.get("rope_theta", hf["rope_theta"])))
    if rope_type == "default":
        return fields
    fields.update(rope_scaling=rope_type, rope_scaling_factor=float(params["factor"]))
    if rope_type == "llama3":
        fields.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                      rope_high_freq_factor=float(params["high_freq_factor"]),
                      rope_original_max_len=int(params["original_max_position_embeddings"]))
    return fields


def _window(model_type: str, hf: Mapping[str, Any]) -> dict[str, Any]:
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        raise _unsupported("use_sliding_window", True, "Qwen2's per-layer window is not "
                           "supported; only false")
    if model_type == "mistral":
        return dict(sliding_window=hf.get("sliding_window"))
    return {}


def _gemma_norm(hf_key: str, shape: tuple[int, ...], our_path: tuple[str, ...]) -> TensorRule:
    """Gemma's RMSNorm multiplies by ``1 + w``: our scale is ``1 + w``."""
    return TensorRule((hf_key,), (tuple(shape),), (our_path,),
                      to_ours=lambda w: (w.astype("float32") + 1.0,),
                      to_hf=lambda scale: ((scale.astype("float32") - 1.0).astype(scale.dtype),))


def _unsupported(field: str, value: Any, supported: str) -> UserError:
    return UserError(f"config.json {field}={value!r} is not supported ({supported}); this "
                     "checkpoint cannot be converted exactly.")


def _abstract_decoder(config: TransformerConfig) -> DecoderLM:
    return abstract_model(lambda: DecoderLM(config, rngs=nnx.Rngs(0)))

