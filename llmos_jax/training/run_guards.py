"""Stopping a run safely: on SIGTERM (preemption) and on divergence.

The loop checks `StopSignal.requested` after each step, so a preempted run
saves a checkpoint and exits cleanly; `finite_or_raise` stops a diverged run
before a non-finite state is saved, keeping the last good checkpoint.
"""

from __future__ import annotations

import math
import signal

import jax

from llmos_jax.errors import UserError
from llmos_jax.checkpoints.checkpointer import Checkpointer


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class StopSignal:
    """Turns SIGTERM into a flag the loop checks, so it can save and exit cleanly."""

    def __init__(self):
        self.requested = False
        self.reason = "SIGTERM received"
        self._previous = None

    def request(self, reason: str) -> None:
        """Asks the loop to save and stop after this step, as SIGTERM does (an alert rule)."""
        self.reason, self.requested = reason, True

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


_DIVERGENCE_SIGNALS = ("loss", "grad_norm", "param_norm")


def finite_or_raise(step: int, metrics, checkpointer: Checkpointer) -> None:
    """Stops on a non-finite loss, gradient or parameter norm before anything is saved.

    The loss alone is not enough: it is computed before the step's update, so
    an update that blows up the parameters shows first in `param_norm`.
    """
    values = {name: float(jax.device_get(metrics[name])) for name in _DIVERGENCE_SIGNALS}
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if not bad:
        return
    checkpointer.wait()
    last = checkpointer.latest_step()
    kept = (f"the last good checkpoint (step {last}) in {checkpointer.directory} is kept"
            if last is not None else "no checkpoint had been saved yet")
    described = ", ".join(f"{name} became {value}" for name, value in bad.items())
    raise TrainingDiverged(
        f"training diverged at step {step}: {described}; {kept}. Lower the learning rate "
        "(--gin.warmup_then_decay.peak_learning_rate=...), lengthen the warmup or tighten "
        "--gin.make_optimizer.grad_clip_norm, then rerun with the same --model_dir to resume.")
