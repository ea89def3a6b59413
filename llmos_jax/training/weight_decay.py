"""Which parameters weight decay applies to, decided by their path names.

Decay shrinks weights towards zero. That regularises matrices, but pulling a
norm's scale towards 0 or a bias towards 0 only fights the model, so those are
excluded. The rule is by name, not by rank: with scanned (stacked) layers a
norm scale has shape `(num_layers, dim)`, so the usual "decay only ndim >= 2"
rule would wrongly decay every stacked scale and bias.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax
from flax import nnx

from llmos_jax.errors import UserError

DEFAULT_EXCLUDE_PATTERNS = (r"(^|/)bias$", r"(^|/)scale$", r"norm")


def _key_name(key: Any) -> str:
    for attribute in ("key", "idx", "name"):  # DictKey/FlattenedIndexKey, SequenceKey, GetAttrKey.
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _is_variable(node: Any) -> bool:
    # An nnx State keeps each parameter inside a Variable whose own pytree key
    # ("value") would end the path; treating it as the leaf keeps paths like
    # "final_norm/bias" identical for nnx States and pure dicts.
    return isinstance(node, nnx.Variable)


def parameter_path(key_path: Sequence[Any]) -> str:
    """The '/'-joined name of a leaf, e.g. "layers/attn/query/kernel"."""
    return "/".join(_key_name(key) for key in key_path)


def _compile(exclude_patterns: Sequence[str]) -> list[re.Pattern[str]]:
    flag = "--gin.weight_decay_mask.exclude_patterns=[...]"
    if isinstance(exclude_patterns, str):
        raise UserError(
            f"weight_decay_mask.exclude_patterns={exclude_patterns!r} is one string, not a list of "
            f"regular expressions; set {flag} (e.g. [{exclude_patterns!r}])"
        )
    compiled = []
    for pattern in exclude_patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as error:
            raise UserError(
                f"weight_decay_mask.exclude_patterns has {pattern!r}, not a valid regular "
                f"expression ({error}); set {flag}"
            ) from None
    return compiled


@gin.configurable
def weight_decay_mask(
    params: Any, exclude_patterns: Sequence[str] = DEFAULT_EXCLUDE_PATTERNS
) -> Any:
    """True for each parameter that weight decay should shrink.

    Args:
      params: a pytree of arrays, e.g. a pure dict from `nnx.to_pure_dict` or an
        `nnx.State` (keys may be str or int).
      exclude_patterns: regular expressions; a parameter whose path (keys
        joined by '/', like "layers/mlp_norm/scale") is matched anywhere by
        any of them (`re.search`) is not decayed. The defaults exclude every
        bias, every scale and anything under a module named "*norm*".

    Returns:
      A pytree shaped like `params` with a bool per parameter, as the `mask`
      argument of optax's decayed-weight transforms expects.
    """
    patterns = _compile(exclude_patterns)

    def decays(key_path, _) -> bool:
        path = parameter_path(key_path)
        return not any(pattern.search(path) for pattern in patterns)

    return jax.tree_util.tree_map_with_path(decays, params, is_leaf=_is_variable)


def describe_mask(
    params: Any, mask_fn: Callable[[Any], Any] = weight_decay_mask
) -> tuple[list[str], list[str]]:
    """(decayed paths, excluded paths), in tree order, for logging at start-up."""
    mask = mask_fn(params)
    flat_mask = jax.tree_util.tree_flatten_with_path(mask)[0]
    decayed = [parameter_path(path) for path, decay in flat_mask if decay]
    excluded = [parameter_path(path) for path, decay in flat_mask if not decay]
    return decayed, excluded
