"""Low-rank adapters (LoRA) on the model's dense projections.

`apply_lora` swaps every `Dense` whose module path matches a target pattern
for a `LoraDense`: the same `kernel` and `bias` (so base checkpoints and
Hugging Face conversions still line up by path) plus `lora_a` [in..., rank]
and `lora_b` [rank, out...], added as `x @ a @ b * alpha / rank`. `lora_b`
starts at zero, so an adapted model starts equal to its base. Stacked
(`scan_layers`) blocks get adapters with the same leading `layers` axis.
`merge_lora` folds the adapters into the kernels and restores plain `Dense`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Iterator, Sequence

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.dense import _LETTERS, Dense, project
from llmos_jax.models.dropout import dropout
from llmos_jax.models.param_paths import path_name

ADAPTER_NAMES = ("lora_a", "lora_b")

# Attention projections and MLP layers of every family (decoder, BERT, T5).
ATTENTION_AND_MLP = (r"(^|/)(attn|self_attn|cross_attn)/(query|key|value|out)$",
                     r"(^|/)mlp/(wi|wi_gate|wi_up|wo)$")

_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "lora_dropout_key", default=None)


@gin.configurable(module="llmos_jax.compression")
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get adapters, and their shape.

    Attributes:
      rank: Inner dimension r of each adapter.
      alpha: The update is scaled by alpha / rank.
      dropout: Dropout on the adapter's input while training (see
        `adapter_dropout`).
      target_patterns: Regular expressions (`re.search`) on module paths such
        as ``layers/0/attn/query`` or ``encoder_layers/mlp/wo``.
      seed: Initialises `lora_a`.
      also_train: Regular expressions (`re.search`) on parameter paths such
        as ``classifier/dense/kernel``: base parameters trained in full beside
        the adapters and saved with them, e.g. a task head that starts fresh
        (PEFT's ``modules_to_save``).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_patterns: Sequence[str] = ATTENTION_AND_MLP
    seed: int = 0
    also_train: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("target_patterns", "also_train"):
            if not isinstance(getattr(self, name), str):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoraParam(nnx.Param):
    """An adapter weight: trainable while the base `nnx.Param`s stay frozen."""


class LoraDense(Dense):
    """`Dense` plus a low-rank update; built from an existing `Dense` by `apply_lora`."""

    def __init__(self, base: Dense, *, rank: int, scale: float, dropout: float, site: int,
                 rngs: nnx.Rngs):
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kernel, self.bias = base.kernel, base.bias
        self.scale, self.dropout, self.site = scale, dropout, site
        kernel_axes = axes.logical_axes_of(base.kernel)
        stacked = base.kernel.ndim - len(self.in_features) - len(self.out_features)
        lead_shape, lead_axes = base.kernel.shape[:stacked], kernel_axes[:stacked]
        n_in = len(self.in_features)
        in_axes = kernel_axes[stacked:stacked + n_in]
        out_axes = kernel_axes[stacked + n_in:]
        fan_in = 1
        for size in self.in_features:
            fan_in *= size
        dtype = base.kernel.dtype
        a = jax.random.normal(rngs.params(), lead_shape + self.in_features + (rank,),
                              dtype) / jnp.sqrt(fan_in).astype(dtype)
        self.lora_a = LoraParam(a, out_sharding=lead_axes + in_axes + (None,),
                                eager_sharding=False)
        self.lora_b = LoraParam(jnp.zeros(lead_shape + (rank,) + self.out_features, dtype),
                                out_sharding=lead_axes + (None,) + out_axes, eager_sharding=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        key = _DROPOUT_KEY.get()
        if key is not None and self.dropout > 0.0:
            x = dropout(x, self.dropout, jax.random.fold_in(key, self.site))
        # `project`: 2-D matmuls on CPU (with [batch, length, ...] einsums XLA:CPU
        # computed lora_b's gradient through a transposing copy of the output gradient,
        # half of a MiniLM LoRA step), the einsum elsewhere, as for the base kernel.
        a, b = self.lora_a[...].astype(x.dtype), self.lora_b[...].astype(x.dtype)
        rank = (a.shape[-1],)
        delta = project(project(x, a, self.in_features, rank), b, rank, self.out_features)
        return y + delta * jnp.asarray(self.scale, x.dtype)

    def merged_kernel(self) -> jax.Array:
        """kernel + scale * a @ b, over any leading `layers` axis."""
        a, b = self.lora_a[...], self.lora_b[...]
        lead = a.ndim - len(self.in_features) - 1
        batch = _LETTERS[:lead]
        ins = _LETTERS[lead: lead + len(self.in_features)]
        outs = _LETTERS[lead + len(self.in_features): lead + len(self.in_features)
                        + len(self.out_features)]
        delta = jnp.einsum(f"{batch}{ins}z,{batch}z{outs}->{batch}{ins}{outs}",
                           a.astype(jnp.float32), b.astype(jnp.float32))
        kernel = self.kernel[...]
        return (kernel.astype(jnp.float32) + self.scale * delta).astype(kernel.dtype)


@contextlib.contextmanager
def adapter_dropout(key: jax.Array | None) -> Iterator[None]:
    """Turns adapter dropout on for model calls traced inside the block.

    The model threads its own dropout keys through block calls, not through
    `Dense`; adapters draw from `key` folded with their own site number
    instead (blocks stacked under `scan_layers` share a site's mask).
    """
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


def dense_paths(model: nnx.Module) -> list[str]:
    """Module paths ('/'-joined) of every `Dense` in the model, in graph order."""
    return [path for path, _ in _dense_modules(model)]


def apply_lora(model: nnx.Module, config: LoraConfig) -> list[str]:
    """Adds adapters in place to each `Dense` matching `config.target_patterns`.

    Returns:
      The adapted module paths.

    Raises:
      UserError: a pattern matches no dense layer, or the rank is not positive.
    """
    if config.rank <= 0:
        raise UserError(f"LoraConfig.rank={config.rank} must be a positive integer (e.g. 8).")
    if not 0.0 <= config.dropout < 1.0:
        raise UserError(f"LoraConfig.dropout={config.dropout} must be in [0, 1).")
    if isinstance(config.target_patterns, str):
        raise UserError(f"LoraConfig.target_patterns={config.target_patterns!r} is one string; "
                        f"write a list: [{config.target_patterns!r}].")
    patterns = []
    for pattern in config.target_patterns:
        try:
            patterns.append(re.compile(pattern))
        except re.error as error:
            raise UserError(f"LoraConfig.target_patterns has {pattern!r}, not a valid regular "
                            f"expression ({error}).") from None
    modules = _dense_modules(model)
    paths = [path for path, _ in modules]
    for pattern in patterns:
        if not any(pattern.search(path) for path in paths):
            raise UserError(
                f"LoraConfig.target_patterns entry {pattern.pattern!r} matches no dense layer of "
                f"this model; its dense layers are e.g. {paths[:6]}. Fix the pattern.")
    _check_also_train(model, config.also_train)
    rngs = nnx.Rngs(params=config.seed)
    adapted = []
    for site, (path, dense) in enumerate(modules):
        if isinstance(dense, LoraDense) or not any(p.search(path) for p in patterns):
            continue
        _replace(model, path, LoraDense(dense, rank=config.rank, scale=config.scale,
                                        dropout=config.dropout, site=site, rngs=rngs))
        adapted.append(path)
    return adapted


def _check_also_train(model: nnx.Module, also_train: Sequence[str]) -> None:
    if isinstance(also_train, str):
        raise UserError(f"LoraConfig.also_train={also_train!r} is one string; write a list: "
                        f"[{also_train!r}].")
    paths = [path_name(key_path)
             for key_path, _ in jax.tree_util.tree_flatten_with_path(
                 nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]]
    for pattern in also_train:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise UserError(f"LoraConfig.also_train has {pattern!r}, not a valid regular "
                            f"expression ({error}).") from None
        if not any(compiled.search(path) for path in paths):
            heads = [path for path in paths if "layers" not in path][-6:]
            raise UserError(f"LoraConfig.also_train entry {pattern!r} matches no parameter of "
                            f"this model; its parameters outside the layers are e.g. {heads}. "
                            "Fix the pattern.")


def merge_lora(model: nnx.Module) -> int:
    """Folds every adapter into its kernel, in place; returns how many were merged."""
    merged = 0
    for path, dense in _dense_modules(model):
        if isinstance(dense, LoraDense):
            dense.kernel.set_value(dense.merged_kernel())  # host arrays may be read-only
            plain = nnx.eval_shape(lambda d=dense: Dense(
                d.in_features, d.out_features, (None,) * len(d.in_features),
                (None,) * len(d.out_features), use_bias=d.bias is not None, init_std=0.0,
                param_dtype=d.kernel.dtype, rngs=nnx.Rngs(0)))
            plain.kernel, plain.bias = dense.kernel, dense.bias
            _replace(model, path, plain)
            merged += 1
    return merged


def _dense_modules(model: nnx.Module) -> list[tuple[str, Dense]]:
    return [("/".join(str(key) for key in path), node)
            for path, node in nnx.iter_graph(model) if isinstance(node, Dense)]


def _replace(model: nnx.Module, path: str, module: nnx.Module) -> None:
    *parents, last = path.split("/")
    parent = model
    for key in parents:
        parent = parent[int(key)] if key.isdigit() else getattr(parent, key)
    if last.isdigit():
        parent[int(last)] = module
    else:
        setattr(parent, last, module)
