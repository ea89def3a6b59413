"""Parameter groups for fine-tuning: frozen parameters and per-group learning rates.

Groups are chosen by regular expressions on parameter paths (keys joined by
'/', e.g. ``encoder/layers/attn/query/kernel``; ``re.search``). A frozen
parameter gets no update at all (its optimizer moments stay zero); a parameter in a
multiplier group is updated with ``learning_rate * multiplier`` (weight decay
scales with it, as it does with the rate everywhere). The first matching
multiplier pattern wins; freezing wins over any multiplier.

`make_optimizer` chains `zero_frozen` before clipping and `scale_by_group`
after the optimizer, so gin can say, for a fine-tune::

    make_optimizer.frozen_patterns = ['^encoder/']
    make_optimizer.learning_rate_multipliers = {'^classifier/': 10.0}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence

import jax
import optax

from llmos_jax.errors import UserError
from llmos_jax.training.weight_decay import parameter_path

log = logging.getLogger("llmos_jax.train")

FROZEN = "frozen"
DEFAULT = "default"


def _compile(patterns: Sequence[str], setting: str) -> list[re.Pattern[str]]:
    if isinstance(patterns, str):
        raise UserError(f"{setting}={patterns!r} is one string, not a list of regular "
                        f"expressions; write [{patterns!r}].")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as error:
            raise UserError(f"{setting} has {pattern!r}, not a valid regular expression "
                            f"({error}).") from None
    return compiled


def _multiplier_items(multipliers: Mapping[str, float] | Sequence[tuple[str, float]]
                      ) -> list[tuple[str, float]]:
    items = list(multipliers.items()) if isinstance(multipliers, Mapping) else [
        tuple(item) for item in multipliers]
    for pattern, value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UserError(f"make_optimizer.learning_rate_multipliers[{pattern!r}]={value!r} "
                            "must be a positive number; freeze parameters with "
                            "make_optimizer.frozen_patterns instead of a 0 multiplier.")
    return items


class ParamGroups:
    """Labels every parameter `frozen`, `default` or `x<multiplier>`.

    Args:
      frozen_patterns: Paths matching any of these are not updated.
      learning_rate_multipliers: Pattern -> multiplier of the learning rate.
    """

    def __init__(self, frozen_patterns: Sequence[str] = (),
                 learning_rate_multipliers: Mapping[str, float] | Sequence[tuple[str, float]] = ()):
        self.frozen = _compile(frozen_patterns, "make_optimizer.frozen_patterns")
        items = _multiplier_items(learning_rate_multipliers)
        self.multipliers = list(zip(
            _compile([p for p, _ in items], "make_optimizer.learning_rate_multipliers"),
            [float(m) for _, m in items]))
        self._logged = False

    @property
    def active(self) -> bool:
        return bool(self.frozen or self.multipliers)

    @property
    def labels(self) -> dict[str, float]:
        """Group label -> learning-rate multiplier (frozen: 0)."""
        groups = {DEFAULT: 1.0, FROZEN: 0.0}
        groups.update({_label(m): m for _, m in self.multipliers})
        return groups

    def label_of(self, path: str) -> str:
        if any(p.search(path) for p in self.frozen):
            return FROZEN
        for pattern, multiplier in self.multipliers:
            if pattern.search(path):
                return _label(multiplier)
        return DEFAULT

    def check_and_log(self, paths: Sequence[str]) -> None:
        """Fails on a pattern that matches no parameter; logs each group's members once."""
        if self._logged:
            return
        for pattern in [*self.frozen, *(p for p, _ in self.multipliers)]:
            if not any(pattern.search(path) for path in paths):
                raise UserError(
                    f"parameter-group pattern {pattern.pattern!r} (make_optimizer.frozen_patterns "
                    "or .learning_rate_multipliers) matches no parameter; parameter paths look "
                    f"like {list(paths[:3])}.")
        for label, members in self.describe(paths).items():
            if label != DEFAULT:
                log.info("parameter group %s (learning rate x%g): %d parameter(s): %s", label,
                         self.labels[label], len(members), ", ".join(members))
        self._logged = True

    def describe(self, paths: Sequence[str]) -> dict[str, list[str]]:
        """Group label -> parameter paths."""
        groups: dict[str, list[str]] = {}
        for name in paths:
            groups.setdefault(self.label_of(name), []).append(name)
        return groups


def _label(multiplier: float) -> str:
    return f"x{multiplier:g}"


def _by_path(fn: Callable[[str, jax.Array], jax.Array],
             check: Callable[[Sequence[str]], None]) -> optax.GradientTransformation:
    """A stateless transformation applying `fn(path, update)` to every update."""

    def update(updates, state, params=None):
        del params
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        paths = [parameter_path(p) for p, _ in flat]
        check(paths)
        return jax.tree_util.tree_unflatten(
            treedef, [fn(path, u) for path, (_, u) in zip(paths, flat)]), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def zero_frozen(groups: ParamGroups) -> optax.GradientTransformation:
    """Zeroes the gradients of frozen parameters (put it before gradient clipping)."""
    return _by_path(lambda path, g: jax.numpy.zeros_like(g)
                    if groups.label_of(path) == FROZEN else g, groups.check_and_log)


def scale_by_group(groups: ParamGroups) -> optax.GradientTransformation:
    """Multiplies each final update by its group's rate multiplier (frozen: 0).

    AdamW, Adafactor (without parameter scaling) and Lion all make updates
    linear in the learning rate, decoupled weight decay included, so this
    equals running the group at `learning_rate * multiplier`. Being
    stateless, it keeps the optimizer state's layout (and its sharding) the
    same as without groups.
    """

    def scale(path: str, update: jax.Array) -> jax.Array:
        multiplier = groups.labels[groups.label_of(path)]
        return update if multiplier == 1.0 else update * jax.numpy.asarray(multiplier, update.dtype)

    return _by_path(scale, groups.check_and_log)
