"""The one spelling of a parameter's path: 'encoder/layers/0/attn/query/kernel'.

Checkpoints, adapter files, LoRA's target and `also_train` patterns and warm
starts all name parameters by these strings, so they must be made the same
way everywhere (dict keys, list indices and attribute names alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def path_name(key_path: Sequence[Any]) -> str:
    """'a/b/0/c' from a `jax.tree_util` key path (DictKey, SequenceKey, GetAttrKey)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in key_path)
