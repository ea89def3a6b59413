"""Learning-rate schedules: a linear warmup followed by one of four decays.

One gin-configurable factory covers the schedules language-model recipes use
(nanoGPT's cosine, linear, T5's reciprocal square root, constant), so a run
changes schedule by changing one binding rather than swapping functions.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp
import optax

from llmos_jax.errors import UserError

_DecayFn = Callable[..., jax.Array]


def _cosine(step, *, peak, end, warmup_steps, decay_steps):
    progress = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
    return end + 0.5 * (1.0 + jnp.cos(math.pi * progress)) * (peak - end)


def _linear(step, *, peak, end, warmup_steps, decay_steps):
    progress = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
    return peak + (end - peak) * progress


def _rsqrt(step, *, peak, end, warmup_steps, decay_steps):
    del decay_steps  # Decays for ever; only the floor stops it.
    reference = max(warmup_steps, 1)
    return jnp.maximum(end, peak * jnp.sqrt(reference / jnp.maximum(step, reference)))


def _constant(step, *, peak, end, warmup_steps, decay_steps):
    del end, warmup_steps, decay_steps
    return jnp.full_like(step, peak)


_DECAYS: dict[str, _DecayFn] = {
    "cosine": _cosine,
    "linear": _linear,
    "rsqrt": _rsqrt,
    "constant": _constant,
}
# Decays that end at `decay_steps` and so need room after the warmup.
_DECAYS_ENDING_AT_DECAY_STEPS = ("cosine", "linear")


def _flag(parameter: str) -> str:
    return f"--gin.warmup_then_decay.{parameter}=..."


def _validate(*, peak_learning_rate, warmup_steps, decay_steps, decay,
              end_learning_rate, initial_learning_rate) -> None:
    if decay not in _DECAYS:
        close = difflib.get_close_matches(decay, _DECAYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"warmup_then_decay.decay={decay!r} is not one of {', '.join(_DECAYS)}{hint}; "
            f"set {_flag('decay')}"
        )
    for name, value in (("warmup_steps", warmup_steps), ("decay_steps", decay_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(
                f"warmup_then_decay.{name}={value!r} must be a non-negative integer; "
                f"set {_flag(name)}"
            )
    for name, value in (("peak_learning_rate", peak_learning_rate),
                        ("end_learning_rate", end_learning_rate),
                        ("initial_learning_rate", initial_learning_rate)):
        if not value >= 0:  # Also rejects NaN.
            raise UserError(f"warmup_then_decay.{name}={value!r} must be >= 0; set {_flag(name)}")
    if decay in _DECAYS_ENDING_AT_DECAY_STEPS and warmup_steps >= decay_steps:
        raise UserError(
            f"warmup_then_decay.warmup_steps={warmup_steps} must be below "
            f"warmup_then_decay.decay_steps={decay_steps} for decay={decay!r}: decay_steps counts "
            f"all steps including the warmup; raise {_flag('decay_steps')} "
            f"or use --gin.warmup_then_decay.decay='constant'"
        )


@gin.configurable
def warmup_then_decay(
    *,
    peak_learning_rate: float,
    warmup_steps: int,
    decay_steps: int,
    decay: str = "cosine",
    end_learning_rate: float = 0.0,
    initial_learning_rate: float = 0.0,
) -> optax.Schedule:
    """Linear warmup to `peak_learning_rate`, then a decay.

    The warmup is nanoGPT's: step `s < warmup_steps` uses
    `initial + (peak - initial) * (s + 1) / (warmup_steps + 1)`. The `+1` is kept
    on purpose so that with the default `initial_learning_rate=0` the schedule
    reproduces nanoGPT's `get_lr` exactly, and so step 0 already learns (optax's
    warmup spends step 0 at the initial rate, wasting a batch when it is 0).
    `initial_learning_rate` is thus where the warmup line starts one step
    before step 0; the rate at step `warmup_steps` is `peak_learning_rate`.

    After the warmup (step >= warmup_steps):
      * "cosine": half cosine from peak to `end_learning_rate`, reached at step
        `decay_steps` (counted from step 0, like nanoGPT's `lr_decay_iters`),
        then constant.
      * "linear": straight line from peak to `end_learning_rate` at
        `decay_steps`, then constant.
      * "rsqrt": `peak * sqrt(max(warmup_steps, 1) / step)` (T5), never below
        `end_learning_rate`; `decay_steps` is unused.
      * "constant": peak for ever; `decay_steps` is unused.

    Args:
      peak_learning_rate: rate at the end of the warmup.
      warmup_steps: number of warmup steps; 0 starts at the peak.
      decay_steps: step at which cosine/linear reach `end_learning_rate`; must
        exceed `warmup_steps` for those two.
      decay: one of "cosine", "linear", "rsqrt", "constant".
      end_learning_rate: final rate (cosine, linear) or floor (rsqrt).
      initial_learning_rate: start of the warmup line (see above).

    Returns:
      An optax schedule: step (int, may be traced) -> float32 learning rate.

    Raises:
      UserError: on an unknown decay, negative steps or rates, or a warmup that
        leaves no room for a cosine/linear decay.
    """
    _validate(peak_learning_rate=peak_learning_rate, warmup_steps=warmup_steps,
              decay_steps=decay_steps, decay=decay, end_learning_rate=end_learning_rate,
              initial_learning_rate=initial_learning_rate)
    decay_fn = _DECAYS[decay]

    def schedule(step) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warming = initial_learning_rate + (
            (peak_learning_rate - initial_learning_rate) * (step + 1.0) / (warmup_steps + 1.0)
        )
        decaying = decay_fn(step, peak=peak_learning_rate, end=end_learning_rate,
                            warmup_steps=warmup_steps, decay_steps=decay_steps)
        return jnp.where(step < warmup_steps, warming, decaying).astype(jnp.float32)

    return schedule
