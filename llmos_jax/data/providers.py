"""Looking up a Task or Mixture by name, registering a built-in one on demand.

`registry` holds the factories that register Tasks and `catalog` the
built-in Tasks registered through them; this module sits above both, so the
two never import each other.
"""

from __future__ import annotations

import seqio

from llmos_jax.data import catalog
from llmos_jax.data.registry import registered_names
from llmos_jax.errors import UserError, did_you_mean


def get_provider(name: str, split: str | None = None, *, setting: str = "LMBatches.task_name",
                 split_setting: str = "LMBatches.split") -> seqio.DatasetProviderBase:
    """The registered Task or Mixture ``name``, registering a built-in one on demand.

    Args:
      name: Task or Mixture name.
      split: when given, the provider must have it.
      setting: the gin parameter or flag that gave ``name``, for messages.
      split_setting: the one that gave ``split``.

    Raises:
      UserError: an unknown name (with close matches) or a missing split.
    """
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        if name in catalog.BUILTIN_TASKS:
            catalog.BUILTIN_TASKS[name]()  # Raises a UserError saying what it needs.
        else:
            known = sorted({*registered_names(), *catalog.BUILTIN_TASKS})
            raise UserError(
                f"{setting}={name!r}: no seqio Task or Mixture has this name.{did_you_mean(name, known)}"
                " Run `llmos tasks list` to see them, or register it first (e.g. gin: "
                f"{setting} = @register_lm_task())."
            )
    provider = seqio.get_mixture_or_task(name)
    if split is not None and split not in provider.splits:
        raise UserError(f"{split_setting}={split!r}: {name!r} has no such split; use one of "
                        f"{list(provider.splits)}.")
    return provider
