"""The optimizer: AdamW, Adafactor or Lion behind one gin binding.

`make_optimizer` returns a single optax transformation: optional global-norm
gradient clipping, then the named optimizer with masked decoupled weight
decay. The whole chain sits inside `optax.inject_hyperparams`, so the
optimizer state records the learning rate it applied; `current_learning_rate`
reads it back for logging. Keeping the rate in the state (rather than handing
the trainer a second copy of the schedule) means there is one source of truth,
it survives checkpoint/restore with the step count, and gin binds the schedule
once: `make_optimizer.learning_rate = @warmup_then_decay()`.

Gradient accumulation is the train step's job, not the optimizer's.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from llmos_jax.errors import UserError
# Registers @warmup_then_decay, the schedule gin binds to make_optimizer.learning_rate.
from llmos_jax.training import schedules  # noqa: F401
from llmos_jax.training.param_groups import ParamGroups, scale_by_group, zero_frozen
from llmos_jax.training.weight_decay import weight_decay_mask

MaskFn = Callable[[Any], Any]


def _adamw(learning_rate, *, b1, b2, eps, weight_decay, mask_fn):
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=mask_fn)


def _adafactor(learning_rate, *, b1, b2, eps, weight_decay, mask_fn):
    # Adafactor has its own second-moment decay (T5's 1 - t^-0.8) and epsilon,
    # and no first moment by default, so b1, b2 and eps do not apply.
    del b1, b2, eps
    return optax.adafactor(
        learning_rate,
        # Off so that `learning_rate` means an absolute step size, as for AdamW
        # and Lion, and one gin line swaps optimizers. On (T5's choice) it
        # scales each step by the parameter's RMS, which expects rates near
        # 1e-2 and barely moves zero-initialised parameters.
        multiply_by_parameter_scale=False,
        # optax adds this decay *after* the learning-rate scaling, so the raw
        # rate would shrink weights by `weight_decay` per step. Scaling it by
        # the learning rate gives AdamW's and Lion's `lr * wd * param`.
        weight_decay_rate=weight_decay * learning_rate if weight_decay else None,
        weight_decay_mask=mask_fn,
    )


def _lion(learning_rate, *, b1, b2, eps, weight_decay, mask_fn):
    del eps  # Lion takes the sign of its update; there is nothing to divide by.
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask_fn)


_OPTIMIZERS = {"adamw": _adamw, "adafactor": _adafactor, "lion": _lion}


def _flag(parameter: str) -> str:
    return f"--gin.make_optimizer.{parameter}=..."


def _validate(*, name, learning_rate, b1, b2, eps, weight_decay, grad_clip_norm) -> None:
    if name not in _OPTIMIZERS:
        close = difflib.get_close_matches(str(name).lower(), _OPTIMIZERS, n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UserError(
            f"make_optimizer.name={name!r} is not one of {', '.join(_OPTIMIZERS)}{hint}; "
            f"set {_flag('name')}"
        )
    if not callable(learning_rate):
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
            raise UserError(
                f"make_optimizer.learning_rate={learning_rate!r} is neither a number nor a "
                f"schedule; "
                f"set {_flag('learning_rate')} (e.g. 3e-4 or @warmup_then_decay())"
            )
        if not learning_rate >= 0:
            raise UserError(f"make_optimizer.learning_rate={learning_rate!r} must be >= 0; "
                            f"set {_flag('learning_rate')}")
    for parameter, value in (("b1", b1), ("b2", b2)):
        if not 0 <= value < 1:
            raise UserError(f"make_optimizer.{parameter}={value!r} must be in [0, 1); "
                            f"set {_flag(parameter)}")
    for parameter, value in (("eps", eps), ("weight_decay", weight_decay)):
        if not value >= 0:
            raise UserError(f"make_optimizer.{parameter}={value!r} must be >= 0; "
                            f"set {_flag(parameter)}")
    if grad_clip_norm is not None and not grad_clip_norm > 0:
        raise UserError(
            f"make_optimizer.grad_clip_norm={grad_clip_norm!r} must be > 0; set "
            f"{_flag('grad_clip_norm')} or --gin.make_optimizer.grad_clip_norm=None to not clip"
        )


@gin.configurable
def make_optimizer(
    *,
    name: str = "adamw",
    learning_rate: float | optax.Schedule = 3e-4,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    grad_clip_norm: float | None = 1.0,
    mask_fn: MaskFn = weight_decay_mask,
    frozen_patterns: Sequence[str] = (),
    learning_rate_multipliers: Mapping[str, float] | Sequence[tuple[str, float]] = (),
) -> optax.GradientTransformation:
    """Gradient clipping, then AdamW, Adafactor or Lion with masked weight decay.

    Weight decay is decoupled and means the same for all three optimizers:
    each step a decayed parameter loses `learning_rate * weight_decay` of
    itself. The learning rate applied by the latest update is stored in the
    state; read it with `current_learning_rate`.

    Args:
      name: "adamw", "adafactor" (factored second moments for matrices whose two
        largest dims are >= 128; no momentum) or "lion" (use a smaller rate
        and b2=0.99, its paper's defaults).
      learning_rate: a constant or an optax schedule of the update count.
      b1: first-moment decay (AdamW) / interpolation factor (Lion).
      b2: second-moment decay (AdamW) / momentum decay (Lion).
      eps: AdamW's denominator epsilon.
      weight_decay: decoupled decay coefficient; 0 disables it.
      grad_clip_norm: clip the gradients' global norm to this before the
        optimizer sees them; None does not clip.
      mask_fn: params -> pytree of bools, True where weight decay applies.
      frozen_patterns: regular expressions on parameter paths ("encoder/...");
        matching parameters are not updated (see `param_groups`).
      learning_rate_multipliers: pattern -> multiplier of the learning rate
        for matching parameters, e.g. {'^classifier/': 10.0}.

    Returns:
      An optax transformation; its state is an `InjectHyperparamsState` whose
      `hyperparams["learning_rate"]` holds the applied rate (float32).

    Raises:
      UserError: on an unknown name or an out-of-range hyperparameter.
    """
    _validate(name=name, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
              weight_decay=weight_decay, grad_clip_norm=grad_clip_norm)
    groups = ParamGroups(frozen_patterns, learning_rate_multipliers)

    def build(rate) -> optax.GradientTransformation:
        return _OPTIMIZERS[name](rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                                 mask_fn=mask_fn)

    def clipped_optimizer(learning_rate) -> optax.GradientTransformation:
        if not groups.active:
            optimizer = build(learning_rate)
            if grad_clip_norm is None:
                return optimizer
            return optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)
        steps = [zero_frozen(groups)] if groups.frozen else []
        if grad_clip_norm is not None:
            steps.append(optax.clip_by_global_norm(grad_clip_norm))
        return optax.chain(*steps, build(learning_rate), scale_by_group(groups))

    # float32 explicitly: by default optax stores hyperparameters in the
    # params' dtype, which for bf16 params would round the logged rate.
    return optax.inject_hyperparams(clipped_optimizer, hyperparam_dtype=jnp.float32)(
        learning_rate=learning_rate
    )


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate of the latest update (before any, the first one's).

    Works on the state of `make_optimizer`'s transformation, also when an
    `nnx.Optimizer` holds it, and inside jit.
    """
    inner = getattr(opt_state, "inner_states", None)  # `adapters_only`: the trained part's
    if isinstance(inner, Mapping) and "adapter" in inner:
        opt_state = getattr(inner["adapter"], "inner_state", inner["adapter"])
    hyperparams = getattr(opt_state, "hyperparams", None)
    if not isinstance(hyperparams, Mapping) or "learning_rate" not in hyperparams:
        raise ValueError(
            f"{type(opt_state).__name__} has no hyperparams['learning_rate']; "
            "pass the state of a transformation built by make_optimizer"
        )
    return jnp.asarray(hyperparams["learning_rate"])
