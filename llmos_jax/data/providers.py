"""Looking up a Task or Mixture by name (registering a built-in one on demand), and Mixtures.

`registry` holds the factories that register Tasks and `catalog` the
built-in Tasks registered through them; this module sits above both, so the
two never import each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gin
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


@gin.configurable
def register_mixture(name: str, tasks: Mapping[str, float] | Sequence[tuple[str, float]]) -> str:
    """Registers a Mixture sampling its Tasks in proportion to their rates.

    Args:
      name: the Mixture name.
      tasks: Task name to positive rate (a dict, or ``(name, rate)`` pairs).
        Unknown names are looked up in the catalog first.

    Returns:
      ``name``.

    Raises:
      UserError: no tasks, a non-positive rate, or an unknown task name.
    """
    pairs = list(tasks.items()) if isinstance(tasks, Mapping) else [tuple(t) for t in tasks]
    if not pairs:
        raise UserError(f"register_mixture.tasks is empty for mixture {name!r}; name its tasks.")
    for task_name, rate in pairs:
        if not rate > 0:
            raise UserError(f"register_mixture.tasks[{task_name!r}]={rate} for mixture {name!r} "
                            "must be a positive rate.")
        get_provider(task_name, setting=f"register_mixture.tasks (mixture {name!r})")
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(task_name, float(rate)) for task_name, rate in pairs])
    return name
