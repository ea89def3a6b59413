"""Faults a gin file can inject into a real run, to prove that the alerts fire.

- `learning_rate_fault`: wraps a learning-rate schedule so that, for a few
  updates, the rate is multiplied (a spike) or NaN (divergence);
- `SleepAtStep`: a hook that blocks the loop at one step, as a hung collective
  or a stuck data reader would (the stall watchdog's case).

Bind them like any configurable, e.g.::

    learning_rate_fault.schedule = @warmup_then_decay()
    learning_rate_fault.at_step = 30
    learning_rate_fault.multiply = 1000.0
    make_optimizer.learning_rate = @learning_rate_fault()
    train.hooks = [@SleepAtStep()]
"""

from __future__ import annotations

import pathlib
import time

import gin
import jax.numpy as jnp
import optax

from llmos_jax.training.hooks import Schedule, StepContext


@gin.configurable
def learning_rate_fault(schedule: optax.Schedule | float, *, at_step: int, num_steps: int = 1,
                        multiply: float = 1.0, nan: bool = False) -> optax.Schedule:
    """`schedule`, except for updates `at_step` .. `at_step + num_steps - 1` (0-based).

    Args:
      schedule: The healthy schedule (or a constant rate).
      at_step: The first faulty update.
      num_steps: How many updates are faulty.
      multiply: The faulty updates' rate is the healthy one times this.
      nan: The faulty updates' rate is NaN instead.
    """
    def faulty(count):
        base = schedule(count) if callable(schedule) else jnp.asarray(schedule, jnp.float32)
        hit = (count >= at_step) & (count < at_step + num_steps)
        return jnp.where(hit, jnp.nan if nan else base * multiply, base)

    return faulty


@gin.configurable
class SleepAtStep:
    """Blocks the training loop for `seconds` after step `step` (`train.hooks`).

    With `release_file`, the stall ends as soon as that file exists (at most
    `seconds` later): a test can then act at a known step, e.g. kill a server
    mid-run, and let training go on.
    """

    def __init__(self, step: int, seconds: float, release_file: str | None = None):
        self.schedule = Schedule(every=1, at_last=False)
        self.step, self.seconds = step, seconds
        self.release_file = pathlib.Path(release_file) if release_file else None

    def on_step(self, context: StepContext) -> None:
        if context.step != self.step:
            return
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if self.release_file is not None and self.release_file.exists():
                return
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def on_end(self, context: StepContext) -> None:
        pass
