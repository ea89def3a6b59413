"""BERT checkpoints (``BertModel`` / ``BertForPreTraining``) <-> our encoder models.

``BertModel`` files (e.g. all-MiniLM-L6-v2) become an ``Encoder``;
``BertForPreTraining`` files (``bert.`` prefix plus ``cls.`` heads) become an
``EncoderForPreTraining``. Layout differences:

=====================================================  ===================================
HF tensor (``bert.`` + for pre-training)               ours (per block: ``layers/i/…``)
=====================================================  ===================================
``embeddings.{word,position,token_type}_embeddings``   ``{token,pos,token_type}_embed``
``embeddings.LayerNorm``                               ``embed_norm``
``encoder.layer.i.attention.self.{query,key,value}``   ``attn/{query,key,value}`` [E, H, D]
``encoder.layer.i.attention.output.dense``             ``attn/out`` [H, D, E]
``encoder.layer.i.attention.output.LayerNorm``         ``attn_norm``
``encoder.layer.i.{intermediate,output}.dense``        ``mlp/{wi,wo}`` (transposed)
``encoder.layer.i.output.LayerNorm``                   ``mlp_norm``
``pooler.dense``                                       ``pooler``
``cls.predictions.transform.{dense,LayerNorm}``        ``mlm_head/{transform,transform_norm}``
``cls.predictions.bias``                               ``mlm_head/bias``
``cls.seq_relationship``                               ``nsp_head/dense``
=====================================================  ===================================

The MLM decoder weight is the word embedding (tied) and is not stored twice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from flax import nnx

from llmos_jax.convert import hf_checkpoint
from llmos_jax.convert.model_params import (abstract_model, apply_overrides, convert_into,
                                             host_params)
from llmos_jax.convert.tensor_mapping import (LAYER, MappingTable, ParamPath, TensorRule,
                                              bias_to_heads, heads_to_linear, linear_to_heads,
                                              renamed, transposed)
from llmos_jax.errors import UserError
from llmos_jax.models import Encoder, EncoderConfig, EncoderForPreTraining

MODEL_TYPE = "bert"
PRETRAINING_PREFIX = "bert."

_HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
    max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
    initializer_range=0.02, position_embedding_type="absolute",
)
ACTIVATIONS_FROM_HF = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                       "relu": "relu", "silu": "silu"}
ACTIVATIONS_TO_HF = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu", "silu": "silu"}
ARCHITECTURE_FIELDS = (
    "vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
    "max_len", "position_embedding", "norm", "norm_eps", "mlp_activation", "use_bias",
    "type_vocab_size", "norm_placement", "pooler",
)
# Non-weight buffers and the tied MLM decoder (it is the word embedding and cls.predictions.bias).
_IGNORED = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$"
                      r"|^cls\.predictions\.decoder\.(weight|bias)$")


def config_from_hf(hf_config: Mapping[str, Any], *, pooler: bool = True,
                   **overrides: Any) -> EncoderConfig:
    """Our ``EncoderConfig`` for a BERT ``config.json``.

    Args:
      hf_config: The parsed config.json.
      pooler: Whether the checkpoint has the pooler (``pooler.dense``).
      **overrides: Fields config.json does not fix (``scan_layers``,
        ``dtype``, ``dropout_rate``, ...).
    """
    model_type = hf_config.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise UserError(f"config.json model_type={model_type!r} is not BERT ({MODEL_TYPE!r}); "
                        "use llmos_jax.convert.hf_models.import_hf_model for other families.")
    hf = {**_HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    if hf["position_embedding_type"] != "absolute":
        raise UserError(f"config.json position_embedding_type={hf['position_embedding_type']!r} "
                        "is not supported; only 'absolute' BERT converts.")
    if hf["hidden_act"] not in ACTIVATIONS_FROM_HF:
        raise UserError(f"config.json hidden_act={hf['hidden_act']!r} is not supported; "
                        f"supported: {', '.join(ACTIVATIONS_FROM_HF)}.")
    from_file = EncoderConfig(
        vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
        embed_dim=hf["hidden_size"], num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
        position_embedding="learned", norm="layernorm", norm_eps=hf["layer_norm_eps"],
        mlp_activation=ACTIVATIONS_FROM_HF[hf["hidden_act"]], use_bias=True,
        tie_embeddings=True, dropout_rate=hf["hidden_dropout_prob"],
        init_std=hf["initializer_range"], type_vocab_size=hf["type_vocab_size"],
        norm_placement="post", pooler=pooler)
    return apply_overrides(from_file, overrides, ARCHITECTURE_FIELDS, "BERT")


def config_to_hf(config: EncoderConfig, *, architecture: str) -> dict[str, Any]:
    """A BERT ``config.json`` for our config; raises if BERT cannot express it."""
    needed = (("position_embedding", "learned"), ("norm", "layernorm"), ("use_bias", True),
              ("norm_placement", "post"), ("num_kv_heads", config.num_heads),
              ("head_dim", config.embed_dim // config.num_heads))
    for field, value in needed:
        if getattr(config, field) != value:
            raise UserError(f"EncoderConfig.{field}={getattr(config, field)!r} cannot be written "
                            f"as BERT, which needs {field}={value!r}; export a bert_config model.")
    if config.mlp_activation not in ACTIVATIONS_TO_HF or config.type_vocab_size == 0:
        raise UserError(f"EncoderConfig mlp_activation={config.mlp_activation!r} / "
                        f"type_vocab_size={config.type_vocab_size} cannot be written as BERT; "
                        f"use one of {', '.join(ACTIVATIONS_TO_HF)} and type_vocab_size >= 1.")
    return {
        "architectures": [architecture], "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size, "hidden_size": config.embed_dim,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim,
        "hidden_act": ACTIVATIONS_TO_HF[config.mlp_activation],
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.dropout_rate,
        "max_position_embeddings": config.max_len, "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.norm_eps, "initializer_range": config.init_std,
        "position_embedding_type": "absolute", "pad_token_id": 0, "tie_word_embeddings": True,
        "dtype": config.param_dtype,
    }


def mapping_table(config: EncoderConfig, *, pretraining: bool) -> MappingTable:
    """BERT's tensor table: ``BertModel`` layout, or ``BertForPreTraining`` with heads."""
    hf = PRETRAINING_PREFIX if pretraining else ""
    ours: ParamPath = ("encoder",) if pretraining else ()
    embed, heads, head_dim, mlp = config.embed_dim, config.num_heads, config.head_dim, config.mlp_dim
    block = f"{hf}encoder.layer.{LAYER}."
    rules = [
        renamed(f"{hf}embeddings.word_embeddings.weight", (config.vocab_size, embed),
                ours + ("token_embed", "embedding")),
        renamed(f"{hf}embeddings.position_embeddings.weight", (config.max_len, embed),
                ours + ("pos_embed", "embedding")),
        renamed(f"{hf}embeddings.token_type_embeddings.weight", (config.type_vocab_size, embed),
                ours + ("token_type_embed", "embedding")),
        *layer_norm_rules(f"{hf}embeddings.LayerNorm", embed, ours + ("embed_norm",)),
    ]
    for name in ("query", "key", "value"):
        rules += [linear_to_heads(f"{block}attention.self.{name}.weight", embed, heads, head_dim,
                                  ("attn", name, "kernel")),
                  bias_to_heads(f"{block}attention.self.{name}.bias", heads, head_dim,
                                ("attn", name, "bias"))]
    rules += [
        heads_to_linear(f"{block}attention.output.dense.weight", embed, heads, head_dim,
                        ("attn", "out", "kernel")),
        renamed(f"{block}attention.output.dense.bias", (embed,), ("attn", "out", "bias")),
        *layer_norm_rules(f"{block}attention.output.LayerNorm", embed, ("attn_norm",)),
        transposed(f"{block}intermediate.dense.weight", (mlp, embed), ("mlp", "wi", "kernel")),
        renamed(f"{block}intermediate.dense.bias", (mlp,), ("mlp", "wi", "bias")),
        transposed(f"{block}output.dense.weight", (embed, mlp), ("mlp", "wo", "kernel")),
        renamed(f"{block}output.dense.bias", (embed,), ("mlp", "wo", "bias")),
        *layer_norm_rules(f"{block}output.LayerNorm", embed, ("mlp_norm",)),
    ]
    if config.pooler:
        rules += [transposed(f"{hf}pooler.dense.weight", (embed, embed), ours + ("pooler", "kernel")),
                  renamed(f"{hf}pooler.dense.bias", (embed,), ours + ("pooler", "bias"))]
    if pretraining:
        rules += [
            transposed("cls.predictions.transform.dense.weight", (embed, embed),
                       ("mlm_head", "transform", "kernel")),
            renamed("cls.predictions.transform.dense.bias", (embed,),
                    ("mlm_head", "transform", "bias")),
            *layer_norm_rules("cls.predictions.transform.LayerNorm", embed,
                              ("mlm_head", "transform_norm")),
            renamed("cls.predictions.bias", (config.vocab_size,), ("mlm_head", "bias")),
            transposed("cls.seq_relationship.weight", (2, embed), ("nsp_head", "dense", "kernel")),
            renamed("cls.seq_relationship.bias", (2,), ("nsp_head", "dense", "bias")),
        ]
    return MappingTable(
        family="BERT", rules=tuple(rules), num_layers=config.num_layers,
        stacked_layers=config.scan_layers, layers_key=ours + ("layers",),
        ignored_hf_key=lambda key: bool(_IGNORED.search(key)),
        config_summary=(f"num_hidden_layers={config.num_layers}, hidden_size={embed}, "
                        f"num_attention_heads={heads}, intermediate_size={mlp}, "
                        f"max_position_embeddings={config.max_len}, "
                        f"type_vocab_size={config.type_vocab_size}, vocab_size={config.vocab_size}"),
    )


def import_bert(directory: str | os.PathLike, **overrides: Any) -> Encoder | EncoderForPreTraining:
    """Our model with the weights of a BERT directory.

    A ``BertForPreTraining`` checkpoint (tensors under ``bert.`` plus ``cls.``
    heads) gives an ``EncoderForPreTraining``; a ``BertModel`` checkpoint an
    ``Encoder`` (with the pooler if the file has one).

    Args:
      directory: Holds ``config.json`` and ``model.safetensors``.
      **overrides: EncoderConfig fields config.json does not fix, e.g.
        ``scan_layers=False`` or ``dropout_rate=0.0``.
    """
    checkpoint = hf_checkpoint.read_checkpoint(directory)
    pretraining = any(key.startswith("cls.") for key in checkpoint.tensors)
    prefix = PRETRAINING_PREFIX if pretraining else ""
    pooler = f"{prefix}pooler.dense.weight" in checkpoint.tensors
    config = config_from_hf(checkpoint.config, pooler=pooler, **overrides)
    model_class = EncoderForPreTraining if pretraining else Encoder
    abstract = abstract_model(lambda: model_class(config, rngs=nnx.Rngs(0)))
    return convert_into(abstract, mapping_table(config, pretraining=pretraining),
                        checkpoint.tensors, checkpoint.weights_description)


def export_bert(model: Encoder | EncoderForPreTraining, directory: str | os.PathLike, *,
                extra_config: Mapping[str, Any] | None = None) -> None:
    """Writes `model` as a directory ``BertModel`` / ``BertForPreTraining`` loads.

    Args:
      model: An ``Encoder`` (written as ``BertModel``) or
        ``EncoderForPreTraining`` (``BertForPreTraining``).
      directory: Created if absent; its config.json and model.safetensors are overwritten.
      extra_config: Fields added to config.json last (e.g. ``pad_token_id``).
    """
    if not isinstance(model, (Encoder, EncoderForPreTraining)):
        raise UserError(f"{type(model).__name__} cannot be exported as BERT; export its "
                        "`.encoder` (an Encoder) or an EncoderForPreTraining.")
    pretraining = isinstance(model, EncoderForPreTraining)
    hf_config = config_to_hf(model.config, architecture="BertForPreTraining" if pretraining
                             else "BertModel")
    hf_config.update(extra_config or {})
    tensors = mapping_table(model.config, pretraining=pretraining).params_to_hf_tensors(
        host_params(model))
    hf_checkpoint.write_checkpoint(directory, hf_config, tensors)


def layer_norm_rules(hf_name: str, dim: int, our_path: ParamPath) -> tuple[TensorRule, ...]:
    """A PyTorch LayerNorm's weight and bias <-> our Norm's scale and bias."""
    return (renamed(f"{hf_name}.weight", (dim,), our_path + ("scale",)),
            renamed(f"{hf_name}.bias", (dim,), our_path + ("bias",)))
