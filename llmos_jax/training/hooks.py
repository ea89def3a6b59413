"""How code subscribes to the training loop: `TrainHook`s, each on its own `Schedule`.

The loop (`trainer.train`) only steps; everything else a run does between
steps (writing metrics, held-out and task evaluation, checkpointing, the
divergence guard) is a hook, and so is anything a user adds through
`train.hooks` or `train(hooks=...)` (an experiment tracker, an alert). After
each step the loop calls `on_step` of the hooks that are due, in order; when
the loop ends (finished, stopped or time-boxed, not on an error) it calls every
hook's `on_end`.

A step's metrics stay on the device until a hook asks for them:
`StepContext.host_metrics()` fetches them once per step (later calls reuse
that copy). A hook that is not due costs nothing, and no hook forces a device
sync on a step where none asks, so the loop keeps dispatching steps ahead of
the device.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Protocol, runtime_checkable

import jax


@dataclasses.dataclass(frozen=True)
class Schedule:
    """At which steps a hook runs.

    Attributes:
      every: Every this many steps (`step % every == 0`); 0: not periodically.
      at_last: Also at the last step of this invocation (the end of training,
        or where `train.stop_after_steps` stops it).
      on_stop: Also at the step where a stop was requested (SIGTERM).
    """

    every: int = 0
    at_last: bool = True
    on_stop: bool = False

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"Schedule.every={self.every} must be >= 0 (0: never periodically).")

    def due(self, step: int, *, last: bool, stopping: bool) -> bool:
        return ((self.every > 0 and step % self.every == 0) or (self.at_last and last)
                or (self.on_stop and stopping))


class Throughput:
    """Step time and tokens/s over the steps since the last report.

    Time a hook spends on work that is not training (an evaluation, a save)
    must not count: such a hook calls `exclude_until_now()` when it is done,
    which starts the interval afresh. (Dropping only the time but keeping the
    steps counted before would credit those steps with no time: an inflated
    rate. Subtracting the hook's own duration would not do either: the hook
    first waits for the steps still queued on the device.)
    """

    def __init__(self, tokens_per_step: float):
        self._tokens_per_step = tokens_per_step
        self.restart()

    def restart(self) -> None:
        """Starts a new interval (after a report)."""
        self._start, self._steps, self._tokens = time.perf_counter(), 0, 0.0

    def count_step(self) -> None:
        self._steps += 1
        self._tokens += self._tokens_per_step

    def exclude_until_now(self) -> None:
        """Starts the interval again: its time so far held non-training work."""
        self.restart()

    def report(self) -> tuple[float, float]:
        """(seconds per step, tokens per second) of this interval."""
        elapsed = time.perf_counter() - self._start
        return elapsed / max(self._steps, 1), self._tokens / elapsed


@dataclasses.dataclass
class StepContext:
    """What a hook sees after a step (and, with `finished` set, at the end).

    Attributes:
      step: Steps taken so far (the state's step).
      state: The `TrainState` after the step, on the device; reading it waits
        for the step to finish.
      metrics: The step's metrics, on the device (see `host_metrics`).
      last: Whether this is the last step of this invocation.
      stopping: Whether a stop (SIGTERM) was requested; the loop ends after
        this step's hooks.
      throughput: The interval's step time and tokens/s.
      finished: In `on_end`: whether training reached `train.num_steps`
        (False when stopped or time-boxed).
    """

    step: int
    state: Any
    metrics: Mapping[str, jax.Array] | None
    last: bool
    stopping: bool
    throughput: Throughput
    finished: bool = False
    _host: dict[str, float] | None = dataclasses.field(default=None, repr=False)

    def host_metrics(self) -> dict[str, float]:
        """The step's metrics as floats: one device fetch per step, shared by all hooks."""
        if self._host is None:
            if self.metrics is None:
                raise ValueError("no step ran in this invocation: there are no metrics")
            self._host = {k: float(v) for k, v in jax.device_get(dict(self.metrics)).items()}
        return dict(self._host)


@runtime_checkable
class TrainHook(Protocol):
    """Something that runs beside the training loop.

    Attributes:
      schedule: The steps at which `on_step` is called.
    """

    schedule: Schedule

    def on_step(self, context: StepContext) -> None:
        """Called after each step `schedule` names, in the order hooks were given."""

    def on_end(self, context: StepContext) -> None:
        """Called once when the loop ends normally (`context.finished` says how)."""


def run_due(hooks: tuple[TrainHook, ...], context: StepContext) -> None:
    """Calls `on_step` of each hook due at `context.step`."""
    for hook in hooks:
        if hook.schedule.due(context.step, last=context.last, stopping=context.stopping):
            hook.on_step(context)
