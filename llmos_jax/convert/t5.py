"""T5 checkpoints (``T5ForConditionalGeneration``, v1.0 and v1.1) <-> ``EncoderDecoderLM``.

===============================================================  =============================
HF tensor                                                        ours
===============================================================  =============================
``shared.weight``                                                ``token_embed/embedding``
``{encoder,decoder}.block.0.layer.0.SelfAttention``
``.relative_attention_bias.weight`` [buckets, H]                 ``{encoder,decoder}_relative_bias``
``encoder.block.i.layer.0.{SelfAttention.{q,k,v,o},layer_norm}``  ``encoder_layers/i/{attn,attn_norm}``
``encoder.block.i.layer.1.{DenseReluDense,layer_norm}``          ``encoder_layers/i/{mlp,mlp_norm}``
``decoder.block.i.layer.0`` (self-attention)                     ``decoder_layers/i/self_attn…``
``decoder.block.i.layer.1.EncDecAttention``                      ``decoder_layers/i/cross_attn…``
``decoder.block.i.layer.2`` (MLP)                                ``decoder_layers/i/mlp…``
``{encoder,decoder}.final_layer_norm.weight``                    ``{encoder,decoder}_norm/scale``
``lm_head.weight`` [V, E]                                        ``lm_head/kernel`` (untied only)
===============================================================  =============================

``DenseReluDense.wi`` (v1.0) or ``wi_0`` / ``wi_1`` (v1.1 gate / linear) map
to ``mlp/wi`` or ``mlp/wi_gate`` / ``mlp/wi_up``. transformers 5 always ties
``lm_head`` to ``shared`` and records v1.0's output scaling as
``scale_decoder_outputs``; older configs signal v1.1 with
``tie_word_embeddings: false`` and store a separate ``lm_head.weight``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from llmos_jax.convert import hf_checkpoint
from llmos_jax.convert.model_params import (abstract_model, apply_overrides, convert_into,
                                            host_params)
from llmos_jax.convert.tensor_mapping import (LAYER, MappingTable, TensorRule, heads_to_linear,
                                              linear_to_heads, renamed, transposed)
from llmos_jax.errors import UserError
from llmos_jax.models import EncoderDecoderConfig, EncoderDecoderLM

MODEL_TYPE = "t5"

_HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None,
    num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu", initializer_factor=1.0,
)
ACTIVATIONS_FROM_HF = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu",
                       "gelu": "gelu_exact", "silu": "silu"}
ACTIVATIONS_TO_HF = {ours: hf for hf, ours in ACTIVATIONS_FROM_HF.items()}
ARCHITECTURE_FIELDS = (
    "vocab_size", "num_layers", "num_decoder_layers", "embed_dim", "num_heads", "num_kv_heads",
    "head_dim", "mlp_dim", "position_embedding", "norm", "norm_eps", "mlp_activation",
    "use_bias", "tie_embeddings", "relative_buckets", "relative_max_distance",
    "scale_attention", "scale_decoder_output",
)
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf_config: Mapping[str, Any], *, tie_embeddings: bool = True,
                   **overrides: Any) -> EncoderDecoderConfig:
    """Our ``EncoderDecoderConfig`` for a T5 ``config.json``.

    Args:
      hf_config: The parsed config.json.
      tie_embeddings: Whether the logits use ``shared.weight`` (no separate
        ``lm_head.weight`` in the file, or an identical one).
      **overrides: Fields config.json does not fix (``scan_layers``, ``dtype``...).
    """
    model_type = hf_config.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise UserError(f"config.json model_type={model_type!r} is not T5 ({MODEL_TYPE!r}); "
                        "use llmos_jax.convert.hf_models.import_hf_model for other families.")
    hf = {**_HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    if hf["feed_forward_proj"] not in ACTIVATIONS_FROM_HF:
        raise UserError(f"config.json feed_forward_proj={hf['feed_forward_proj']!r} is not "
                        f"supported; supported: {', '.join(ACTIVATIONS_FROM_HF)}.")
    if "scale_decoder_outputs" in hf:
        scale = bool(hf["scale_decoder_outputs"])
    else:
        scale = hf.get("tie_word_embeddings", True) is not False
    from_file = EncoderDecoderConfig(
        vocab_size=hf["vocab_size"], num_layers=hf["num_layers"],
        num_decoder_layers=hf["num_decoder_layers"] or hf["num_layers"],
        embed_dim=hf["d_model"], num_heads=hf["num_heads"], head_dim=hf["d_kv"],
        mlp_dim=hf["d_ff"], position_embedding="none", norm="rmsnorm",
        norm_eps=hf["layer_norm_epsilon"], mlp_activation=ACTIVATIONS_FROM_HF[hf["feed_forward_proj"]],
        use_bias=False, tie_embeddings=tie_embeddings, dropout_rate=hf["dropout_rate"],
        mlp_hidden_dropout=True,
        relative_buckets=hf["relative_attention_num_buckets"],
        relative_max_distance=hf["relative_attention_max_distance"],
        scale_attention=False, scale_decoder_output=scale)
    return apply_overrides(from_file, overrides, ARCHITECTURE_FIELDS, "T5")


def config_to_hf(config: EncoderDecoderConfig) -> dict[str, Any]:
    """A T5 ``config.json`` for our config; raises if T5 cannot express it."""
    needed = (("norm", "rmsnorm"), ("use_bias", False), ("num_kv_heads", config.num_heads),
              ("scale_attention", False))
    for field, value in needed:
        if getattr(config, field) != value:
            raise UserError(f"EncoderDecoderConfig.{field}={getattr(config, field)!r} cannot be "
                            f"written as T5, which needs {field}={value!r}; export a t5_config model.")
    if config.mlp_activation not in ACTIVATIONS_TO_HF:
        raise UserError(f"EncoderDecoderConfig.mlp_activation={config.mlp_activation!r} cannot be "
                        f"written as T5; use one of {', '.join(ACTIVATIONS_TO_HF)}.")
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size, "d_model": config.embed_dim, "d_kv": config.head_dim,
        "d_ff": config.mlp_dim, "num_layers": config.num_layers,
        "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_buckets,
        "relative_attention_max_distance": config.relative_max_distance,
        "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": ACTIVATIONS_TO_HF[config.mlp_activation],
        "tie_word_embeddings": config.tie_embeddings,
        "scale_decoder_outputs": config.scale_decoder_output,
        "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, "dtype": config.param_dtype,
    }


def mapping_table(config: EncoderDecoderConfig) -> MappingTable:
    """T5's tensor table for `config`."""
    embed, heads, head_dim = config.embed_dim, config.num_heads, config.head_dim
    encoder = ("encoder_layers", config.num_layers)
    decoder = ("decoder_layers", config.num_decoder_layers)
    bias_shape = (config.relative_buckets, heads)
    rules = [
        renamed("shared.weight", (config.vocab_size, embed), ("token_embed", "embedding")),
        renamed("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                bias_shape, ("encoder_relative_bias", "embedding")),
        renamed("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                bias_shape, ("decoder_relative_bias", "embedding")),
        renamed("encoder.final_layer_norm.weight", (embed,), ("encoder_norm", "scale")),
        renamed("decoder.final_layer_norm.weight", (embed,), ("decoder_norm", "scale")),
    ]
    sublayers = (
        (encoder, "encoder", 0, "SelfAttention", "attn"),
        (decoder, "decoder", 0, "SelfAttention", "self_attn"),
        (decoder, "decoder", 1, "EncDecAttention", "cross_attn"),
    )
    for stack, side, index, hf_name, ours in sublayers:
        prefix = f"{side}.block.{LAYER}.layer.{index}."
        for hf_proj, our_proj in (("q", "query"), ("k", "key"), ("v", "value")):
            rules.append(linear_to_heads(f"{prefix}{hf_name}.{hf_proj}.weight", embed, heads,
                                         head_dim, (ours, our_proj, "kernel")))
        rules.append(heads_to_linear(f"{prefix}{hf_name}.o.weight", embed, heads, head_dim,
                                     (ours, "out", "kernel")))
        rules.append(renamed(f"{prefix}layer_norm.weight", (embed,), (f"{ours}_norm", "scale")))
    for stack, side, index in ((encoder, "encoder", 1), (decoder, "decoder", 2)):
        prefix = f"{side}.block.{LAYER}.layer.{index}."
        rules += _mlp_rules(f"{prefix}DenseReluDense.", config)
        rules.append(renamed(f"{prefix}layer_norm.weight", (embed,), ("mlp_norm", "scale")))
    rules = [_in_stack(rule, encoder if rule.hf_keys[0].startswith("encoder") else decoder)
             for rule in rules]
    if not config.tie_embeddings:
        rules.append(transposed("lm_head.weight", (config.vocab_size, embed), ("lm_head", "kernel")))
    tied = config.tie_embeddings
    return MappingTable(
        family="T5", rules=tuple(rules), num_layers=config.num_layers,
        stacked_layers=config.scan_layers,
        ignored_hf_key=lambda key: key in _TIED_COPIES or (tied and key == "lm_head.weight"),
        config_summary=(f"num_layers={config.num_layers}, num_decoder_layers="
                        f"{config.num_decoder_layers}, d_model={embed}, num_heads={heads}, "
                        f"d_kv={head_dim}, d_ff={config.mlp_dim}, vocab_size={config.vocab_size}, "
                        f"feed_forward_proj={ACTIVATIONS_TO_HF.get(config.mlp_activation)!r}"),
    )


def import_t5(directory: str | os.PathLike, **overrides: Any) -> EncoderDecoderLM:
    """An ``EncoderDecoderLM`` with the weights of a T5 directory.

    Args:
      directory: Holds ``config.json`` and ``model.safetensors``.
      **overrides: EncoderDecoderConfig fields config.json does not fix,
        e.g. ``scan_layers=False`` or ``dropout_rate=0.0``.
    """
    checkpoint = hf_checkpoint.read_checkpoint(directory)
    tensors = checkpoint.tensors
    tied = ("lm_head.weight" not in tensors or "shared.weight" not in tensors
            or np.array_equal(tensors["lm_head.weight"], tensors["shared.weight"]))
    config = config_from_hf(checkpoint.config, tie_embeddings=tied, **overrides)
    abstract = abstract_model(lambda: EncoderDecoderLM(config, rngs=nnx.Rngs(0)))
    return convert_into(abstract, mapping_table(config), tensors, checkpoint.weights_description)


def export_t5(model: EncoderDecoderLM, directory: str | os.PathLike, *,
              extra_config: Mapping[str, Any] | None = None) -> None:
    """Writes `model` as a directory ``T5ForConditionalGeneration.from_pretrained`` loads.

    An untied model (v1.1) writes ``lm_head.weight``; note that transformers
    5 ties ``lm_head`` to ``shared`` on load, so only tied models reproduce
    their logits there (our importer keeps both).
    """
    if not isinstance(model, EncoderDecoderLM):
        raise UserError(f"{type(model).__name__} cannot be exported as T5; pass an EncoderDecoderLM.")
    hf_config = config_to_hf(model.config)
    hf_config.update(extra_config or {})
    tensors = mapping_table(model.config).params_to_hf_tensors(host_params(model))
    hf_checkpoint.write_checkpoint(directory, hf_config, tensors)


def _mlp_rules(prefix: str, config: EncoderDecoderConfig) -> list[TensorRule]:
    shape = (config.mlp_dim, config.embed_dim)
    inputs = ((("wi_0", "wi_gate"), ("wi_1", "wi_up")) if config.gated_mlp else (("wi", "wi"),))
    rules = [transposed(f"{prefix}{hf}.weight", shape, ("mlp", ours, "kernel"))
             for hf, ours in inputs]
    rules.append(transposed(f"{prefix}wo.weight", shape[::-1], ("mlp", "wo", "kernel")))
    return rules


def _in_stack(rule: TensorRule, stack: tuple[str, int]) -> TensorRule:
    """A per-layer rule placed in the encoder or decoder block stack."""
    if not rule.per_layer:
        return rule
    return TensorRule(rule.hf_keys, rule.hf_shapes, rule.our_paths, rule.to_ours, rule.to_hf,
                      stack=stack)
