"""Loss and gradient-norm spike detection inside the jitted train step.

The step's buffers are donated, so once it returns the old parameters are
gone: skipping a bad update has to be decided inside the step. `guard_step`
wraps the (unjitted) train step: after it computes the update it compares the
step's loss and gradient norm with rolling windows of recent values (carried
between steps as a small replicated buffer, itself donated), and

- counts a spike when a value exceeds the window's mean by more than the
  rule's `sigmas` standard deviations, once `min_history` values were seen;
- keeps spikes (and non-finite values) out of the window, so one bad step
  does not widen it;
- with a rule's "skip_update" action, returns the old parameters and
  optimizer state for that step (the step counter and the data still move on).

The results ride along in the step's metrics (`loss_spikes`, `grad_norm_spikes`
and `skipped_updates` counted since the run started, and the latest spike's
z-score), so they cost no extra device sync: the alert hook reads them with
the logged metrics and fires for any spike since the last look.

The windows are not checkpointed: after a resume they refill before the
rules can fire again (`min_history`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from llmos_jax.partitioning import Layout
from llmos_jax.training.alert_rules import GradNormSpike, LossSpike
from llmos_jax.training.train_state import TrainState

SpikeRule = LossSpike | GradNormSpike


def initial_statistics(rules: Sequence[SpikeRule]) -> dict[str, Any]:
    """Empty windows and zero counters, one set per rule's signal."""
    state: dict[str, Any] = {"skipped_updates": jnp.zeros((), jnp.int32)}
    for rule in rules:
        state[rule.signal] = {"window": jnp.zeros((rule.window,), jnp.float32),
                              "seen": jnp.zeros((), jnp.int32),
                              "spikes": jnp.zeros((), jnp.int32),
                              "last_z": jnp.zeros((), jnp.float32)}
    return state


def zscore(window: jax.Array, seen: jax.Array, value: jax.Array) -> jax.Array:
    """How many standard deviations `value` is above the mean of the filled part of `window`."""
    filled = jnp.arange(window.shape[0]) < jnp.minimum(seen, window.shape[0])
    count = jnp.maximum(filled.sum(), 1)
    mean = jnp.where(filled, window, 0.0).sum() / count
    variance = jnp.where(filled, (window - mean) ** 2, 0.0).sum() / count
    # A floor on the deviation: a flat window (a constant loss) must not make
    # every tiny wiggle infinitely many sigmas.
    scale = jnp.maximum(jnp.sqrt(variance), 1e-3 * jnp.abs(mean) + 1e-12)
    return (value - mean) / scale


def update_statistics(rule: SpikeRule, stats: Mapping[str, jax.Array],
                      value: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    """(new statistics, whether `value` is a spike) for one rule's signal."""
    value = value.astype(jnp.float32)
    z = zscore(stats["window"], stats["seen"], value)
    finite = jnp.isfinite(value)
    spike = finite & (stats["seen"] >= rule.min_history) & (z > rule.sigmas)
    keep = finite & ~spike
    slot = stats["seen"] % rule.window
    window = jnp.where(keep, stats["window"].at[slot].set(value), stats["window"])
    return {"window": window,
            "seen": stats["seen"] + keep.astype(jnp.int32),
            "spikes": stats["spikes"] + spike.astype(jnp.int32),
            "last_z": jnp.where(spike, z, stats["last_z"])}, spike


def guard_step(train_step: Callable, rules: Sequence[SpikeRule]) -> Callable:
    """`step(state, batch, stats) -> (state, metrics, stats)`: `train_step` with spike rules."""
    rules = tuple(rules)

    def guarded(state: TrainState, batch, stats):
        new_state, metrics = train_step(state, batch)
        stats = dict(stats)
        metrics = dict(metrics)
        skip = jnp.zeros((), bool)
        for rule in rules:
            stats[rule.signal], spike = update_statistics(rule, stats[rule.signal],
                                                          metrics[rule.signal])
            metrics[f"{rule.signal}_spikes"] = stats[rule.signal]["spikes"].astype(jnp.float32)
            metrics[f"{rule.signal}_spike_zscore"] = stats[rule.signal]["last_z"]
            if rule.skips_update:
                skip = skip | spike
        if any(rule.skips_update for rule in rules):
            kept = jax.tree.map(lambda old, new: jnp.where(skip, old, new),
                                (state.params, state.opt_state),
                                (new_state.params, new_state.opt_state))
            new_state = TrainState(step=new_state.step, params=kept[0], opt_state=kept[1])
            stats["skipped_updates"] = stats["skipped_updates"] + skip.astype(jnp.int32)
            metrics["skipped_updates"] = stats["skipped_updates"].astype(jnp.float32)
        return new_state, metrics, stats

    return guarded


class GuardedTrainStep:
    """A jitted `guard_step` that keeps its statistics between calls: `step(state, batch)`.

    It is called like the plain jitted step (`trainer._loop` does not know the
    difference); the statistics buffer stays on the device and is donated.
    """

    def __init__(self, train_step: Callable, rules: Sequence[SpikeRule],
                 state_shardings: TrainState, batch_shardings, layout: Layout):
        stat_shardings = jax.tree.map(lambda _: layout.replicated,
                                      jax.eval_shape(lambda: initial_statistics(rules)))
        self._step = jax.jit(guard_step(train_step, rules),
                             in_shardings=(state_shardings, batch_shardings, stat_shardings),
                             out_shardings=(state_shardings, layout.replicated, stat_shardings),
                             donate_argnums=(0, 2))
        # Made by a jitted function, so every host of a multi-host run holds its part.
        self.statistics = jax.jit(lambda: initial_statistics(rules),
                                  out_shardings=stat_shardings)()

    def __call__(self, state: TrainState, batch):
        state, metrics, self.statistics = self._step(state, batch, self.statistics)
        return state, metrics
