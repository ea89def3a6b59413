"""GPT-2 checkpoints (transformers' ``GPT2LMHeadModel``) <-> our ``DecoderLM``.

GPT-2 is our learned-position, LayerNorm, tanh-GELU, tied-embedding decoder;
only the tensor layout differs:

==============================  =======================================
HF tensor (``transformer.`` +)   our parameter (per block: ``layers/…``)
==============================  =======================================
``wte.weight`` [V, E]            ``token_embed/embedding``
``wpe.weight`` [P, E]            ``pos_embed/embedding``
``h.i.ln_1`` weight / bias       ``attn_norm`` scale / bias
``h.i.attn.c_attn`` [E, 3E]      ``attn/{query,key,value}`` [E, H, D]
``h.i.attn.c_proj`` [E, E]       ``attn/out`` [H, D, E]
``h.i.ln_2`` weight / bias       ``mlp_norm`` scale / bias
``h.i.mlp.c_fc`` [E, M]          ``mlp/wi`` [E, M]
``h.i.mlp.c_proj`` [M, E]        ``mlp/wo`` [M, E]
``ln_f`` weight / bias           ``final_norm`` scale / bias
``lm_head.weight`` [V, E]        ``lm_head/kernel`` [E, V] (untied only)
==============================  =======================================

HF's ``Conv1D`` stores weights [in, out], as our kernels do, so nothing is
transposed except an untied ``lm_head`` (a PyTorch ``Linear``, [out, in]).
The fused ``c_attn`` output is ``[q | k | v]``, each head-major (column
``h * D + d``), which is how it splits into our [E, H, D] kernels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from llmos_jax.convert import hf_checkpoint
from llmos_jax.convert.model_params import (abstract_model, apply_overrides, convert_into,
                                            converted_params, host_params)
from llmos_jax.convert.tensor_mapping import LAYER, MappingTable, TensorRule, renamed, transposed
from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig

MODEL_TYPE = "gpt2"
HF_PREFIX = "transformer."

# transformers' GPT2Config defaults: a config.json that omits a field means these.
_HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
    activation_function="gelu_new", resid_pdrop=0.1, layer_norm_epsilon=1e-5,
    initializer_range=0.02, tie_word_embeddings=True, scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False, add_cross_attention=False,
)
# HF activation name -> our TransformerConfig.mlp_activation. gelu_new,
# gelu_pytorch_tanh and gelu_fast are all the tanh approximation.
ACTIVATIONS_FROM_HF = {
    "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
    "gelu": "gelu_exact", "relu": "relu", "silu": "silu", "swish": "silu",
}
ACTIVATIONS_TO_HF = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}
# Fields config.json fixes: overriding them would not match the weights or their math.
ARCHITECTURE_FIELDS = (
    "vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
    "max_len", "position_embedding", "norm", "norm_eps", "mlp_activation", "use_bias",
    "tie_embeddings",
)
# Buffers some GPT-2 checkpoints carry (a cached causal mask), not weights.
_MASK_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(masked_)?bias$")


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> TransformerConfig:
    """Our ``TransformerConfig`` for a GPT-2 ``config.json``.

    Args:
      hf_config: The parsed config.json.
      **overrides: TransformerConfig fields that config.json does not fix, e.g.
        ``scan_layers=False``, ``dtype="bfloat16"``, ``dropout_rate=0.0``.
        ``dropout_rate`` defaults to GPT-2's ``resid_pdrop``; ``param_dtype``
        to float32, whatever dtype the checkpoint is stored in.
    """
    model_type = hf_config.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise UserError(f"config.json model_type={model_type!r} is not GPT-2 ({MODEL_TYPE!r}); "
                        "use llmos_jax.convert.hf_models.import_hf_model for other families.")
    hf = {**_HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None or k == "n_inner"}}
    for field, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                             ("add_cross_attention", False)):
        if bool(hf[field]) != supported:
            raise UserError(
                f"config.json {field}={hf[field]!r} is not supported: DecoderLM implements GPT-2 "
                f"with {field}={supported}."
            )
    activation = hf["activation_function"]
    if activation not in ACTIVATIONS_FROM_HF:
        raise UserError(f"config.json activation_function={activation!r} is not supported; "
                        f"supported: {', '.join(ACTIVATIONS_FROM_HF)}.")
    if hf["n_embd"] % hf["n_head"]:
        raise UserError(f"config.json n_embd={hf['n_embd']} is not divisible by n_head={hf['n_head']}.")
    fields: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"], num_layers=hf["n_layer"], embed_dim=hf["n_embd"],
        num_heads=hf["n_head"], mlp_dim=hf["n_inner"] or 4 * hf["n_embd"],
        max_len=hf["n_positions"], position_embedding="learned", norm="layernorm",
        norm_eps=hf["layer_norm_epsilon"], mlp_activation=ACTIVATIONS_FROM_HF[activation],
        use_bias=True, tie_embeddings=bool(hf["tie_word_embeddings"]),
        dropout_rate=hf["resid_pdrop"], init_std=hf["initializer_range"],
    )
    return apply_overrides(TransformerConfig(**fields), overrides, ARCHITECTURE_FIELDS, "GPT-2")


def config_to_hf(config: TransformerConfig) -> dict[str, Any]:
    """A GPT-2 ``config.json`` for our config; raises if GPT-2 cannot express it."""
    representable = (
        ("position_embedding", "learned"), ("norm", "layernorm"), ("use_bias", True),
        ("num_kv_heads", config.num_heads), ("head_dim", config.embed_dim // config.num_heads),
        ("qkv_biased", True), ("sliding_window", None), ("scale_embeddings", False),
    )
    for field, needed in representable:
        if getattr(config, field) != needed:
            raise UserError(
                f"TransformerConfig.{field}={getattr(config, field)!r} cannot be written as GPT-2, "
                f"which needs {field}={needed!r}; only GPT-2-shaped models (gpt2_config) "
                "export to gpt2."
            )
    if config.mlp_activation not in ACTIVATIONS_TO_HF:
        raise UserError(
            f"TransformerConfig.mlp_activation={config.mlp_activation!r} cannot be written as GPT-2; "
            f"GPT-2 supports {', '.join(ACTIVATIONS_TO_HF)}."
        )
    end_of_text = 50256 if config.vocab_size > 50256 else None  # GPT-2 BPE's <|endoftext|>
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "n_positions": config.max_len,
        "n_embd": config.embed_dim,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": None if config.mlp_dim == 4 * config.embed_dim else config.mlp_dim,
        "activation_function": ACTIVATIONS_TO_HF[config.mlp_activation],
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout_rate,
        "embd_pdrop": config.dropout_rate,
        "attn_pdrop": config.dropout_rate,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "dtype": config.param_dtype,
    }


def mapping_table(config: TransformerConfig, *, hf_prefix: str = HF_PREFIX) -> MappingTable:
    """GPT-2's tensor table for `config`.

    Args:
      config: A GPT-2-shaped TransformerConfig.
      hf_prefix: ``"transformer."`` for ``GPT2LMHeadModel`` files, ``""`` for
        bare ``GPT2Model`` files (the original OpenAI upload).
    """
    vocab, embed, heads = config.vocab_size, config.embed_dim, config.num_heads
    head_dim, mlp = config.head_dim, config.mlp_dim
    block = f"{hf_prefix}h.{LAYER}."
    rules = [
        renamed(f"{hf_prefix}wte.weight", (vocab, embed), ("token_embed", "embedding")),
        renamed(f"{hf_prefix}wpe.weight", (config.max_len, embed), ("pos_embed", "embedding")),
        *_norm_rules(f"{block}ln_1", embed, ("attn_norm",)),
        TensorRule(
            (f"{block}attn.c_attn.weight", f"{block}attn.c_attn.bias"),
            ((embed, 3 * heads * head_dim), (3 * heads * head_dim,)),
            tuple(("attn", name, part) for part in ("kernel", "bias")
                  for name in ("query", "key", "value")),
            to_ours=lambda weight, bias: (*_split_qkv(weight, heads, head_dim),
                                          *_split_qkv(bias, heads, head_dim)),
            to_hf=lambda qk, kk, vk, qb, kb, vb: (_fuse_qkv(qk, kk, vk), _fuse_qkv(qb, kb, vb)),
        ),
        TensorRule(
            (f"{block}attn.c_proj.weight",), ((heads * head_dim, embed),), (("attn", "out", "kernel"),),
            to_ours=lambda weight: (weight.reshape(heads, head_dim, embed),),
            to_hf=lambda kernel: (kernel.reshape(heads * head_dim, embed),),
        ),
        renamed(f"{block}attn.c_proj.bias", (embed,), ("attn", "out", "bias")),
        *_norm_rules(f"{block}ln_2", embed, ("mlp_norm",)),
        renamed(f"{block}mlp.c_fc.weight", (embed, mlp), ("mlp", "wi", "kernel")),
        renamed(f"{block}mlp.c_fc.bias", (mlp,), ("mlp", "wi", "bias")),
        renamed(f"{block}mlp.c_proj.weight", (mlp, embed), ("mlp", "wo", "kernel")),
        renamed(f"{block}mlp.c_proj.bias", (embed,), ("mlp", "wo", "bias")),
        *_norm_rules(f"{hf_prefix}ln_f", embed, ("final_norm",)),
    ]
    if not config.tie_embeddings:
        rules.append(transposed("lm_head.weight", (vocab, embed), ("lm_head", "kernel")))
    tied = config.tie_embeddings

    def ignored(key: str) -> bool:
        # A tied lm_head.weight is wte itself; transformers re-ties it on load too.
        return bool(_MASK_BUFFER.search(key)) or (tied and key == "lm_head.weight")

    return MappingTable(
        family="GPT-2", rules=tuple(rules), num_layers=config.num_layers,
        stacked_layers=config.scan_layers, ignored_hf_key=ignored,
        config_summary=(f"n_layer={config.num_layers}, n_embd={embed}, n_head={heads}, "
                        f"n_inner={mlp}, n_positions={config.max_len}, vocab_size={vocab}, "
                        f"tie_word_embeddings={tied}"),
    )


def load_gpt2_params(checkpoint: hf_checkpoint.HfCheckpoint,
                     config: TransformerConfig) -> dict:
    """Our parameters for a GPT-2 checkpoint, as a nested pure dict of numpy arrays.

    The dict matches ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` of a
    ``DecoderLM(config)``, so a model built elsewhere (e.g. sharded by the
    trainer) takes it with ``nnx.replace_by_pure_dict``.
    """
    return converted_params(_abstract_decoder(config), _table_for(checkpoint, config),
                            checkpoint.tensors, checkpoint.weights_description)


def import_gpt2(directory: str | os.PathLike, **overrides: Any) -> DecoderLM:
    """A ``DecoderLM`` with the weights of a GPT-2 model directory.

    Parameters land on the default device; to place them on a mesh, build
    the model there and fill it with :func:`load_gpt2_params`.

    Args:
      directory: Holds ``config.json`` and ``model.safetensors`` (as
        ``GPT2LMHeadModel.save_pretrained`` writes them).
      **overrides: TransformerConfig fields that config.json does not fix,
        e.g. ``scan_layers=False`` or ``param_dtype="bfloat16"`` (see
        :func:`config_from_hf`).
    """
    checkpoint = hf_checkpoint.read_checkpoint(directory)
    config = config_from_hf(checkpoint.config, **overrides)
    return convert_into(_abstract_decoder(config), _table_for(checkpoint, config),
                        checkpoint.tensors, checkpoint.weights_description)


def export_gpt2(model: DecoderLM, directory: str | os.PathLike, *,
                extra_config: Mapping[str, Any] | None = None) -> None:
    """Writes `model` as a GPT-2 directory that ``GPT2LMHeadModel.from_pretrained`` loads.

    Weights keep the model's parameter dtype. Every parameter is gathered to
    this host, so call it where the whole model fits in host memory.

    Args:
      model: A GPT-2-shaped DecoderLM.
      directory: Created if absent; ``config.json`` and ``model.safetensors``
        are overwritten.
      extra_config: Fields added to config.json last, e.g. tokenizer ids
        (``bos_token_id``, ``eos_token_id``, ``pad_token_id``).
    """
    hf_config = config_to_hf(model.config)
    hf_config.update(extra_config or {})
    tensors = mapping_table(model.config).params_to_hf_tensors(host_params(model))
    hf_checkpoint.write_checkpoint(directory, hf_config, tensors)


def _abstract_decoder(config: TransformerConfig) -> DecoderLM:
    return abstract_model(lambda: DecoderLM(config, rngs=nnx.Rngs(0)))


def _table_for(checkpoint: hf_checkpoint.HfCheckpoint, config: TransformerConfig) -> MappingTable:
    """The table for this file's naming: ``GPT2LMHeadModel`` (prefixed) or bare ``GPT2Model``."""
    prefix = HF_PREFIX if any(key.startswith(HF_PREFIX) for key in checkpoint.tensors) else ""
    return mapping_table(config, hf_prefix=prefix)


def _norm_rules(hf_name: str, dim: int, our_path: tuple[str, ...]) -> tuple[TensorRule, TensorRule]:
    return (renamed(f"{hf_name}.weight", (dim,), our_path + ("scale",)),
            renamed(f"{hf_name}.bias", (dim,), our_path + ("bias",)))


def _split_qkv(fused: np.ndarray, heads: int, head_dim: int) -> tuple[np.ndarray, ...]:
    """[..., 3 * H * D] -> three [..., H, D] arrays (q, k, v)."""
    split = fused.reshape(*fused.shape[:-1], 3, heads, head_dim)
    return tuple(np.ascontiguousarray(split[..., part, :, :]) for part in range(3))


def _fuse_qkv(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Three [..., H, D] arrays -> [..., 3 * H * D], the order of c_attn's columns."""
    stacked = np.stack([query, key, value], axis=-3)
    return stacked.reshape(*stacked.shape[:-3], -1)
