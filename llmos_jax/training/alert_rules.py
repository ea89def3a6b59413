"""Training alert rules, kept as data: each a gin-configurable dataclass.

A rule says what to watch, its threshold, its cool-down (in steps: repeated
firings within it are dropped) and its actions: any of "log", "file"
(`<model_dir>/alerts.jsonl`), "webhook" (`Alerting.webhook_url`), and where
the rule allows, "skip_update" (the spike rules: decided inside the jitted
step, see `spike_statistics`) and "stop" (save a checkpoint at the next step,
then exit with `EXIT_CODE_ALERT_STOP`; the stall watchdog exits with
`EXIT_CODE_STALLED`).

Rules on the step's metrics (non-finite, spikes, evaluation) decide alike
on every host of a multi-host run. Throughput and stalls are timed on each
host, so there "stop" may stop one host's loop only: keep those two rules to
alerting on multi-host runs (a stalled host then exits after
`stop_grace_seconds`, which ends the job for its scheduler to restart).

`Alerting` holds the rules and where alerts go; bind it as
`train.alerting = @Alerting()` (the default has every rule below with
"log" and "file"). A non-finite loss or norm always stops the run (the
divergence guard); `NonFinite` only says how it is announced.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gin

from llmos_jax.errors import UserError
from llmos_jax.monitoring.alert_delivery import DELIVERY_ACTIONS, WEBHOOK_FORMATS

# sysexits.h EX_TEMPFAIL: the job may succeed if retried (a hung collective, a slow host).
EXIT_CODE_STALLED = 75
# EX_SOFTWARE: a rule judged the run unhealthy and stopped it after saving.
EXIT_CODE_ALERT_STOP = 70

_DEFAULT_ACTIONS = ("log", "file", "webhook")


def _check(rule, allowed: Sequence[str]) -> None:
    name = type(rule).__name__
    actions = tuple(rule.actions)
    object.__setattr__(rule, "actions", actions)
    for action in actions:
        if action not in allowed:
            raise UserError(f"{name}.actions has {action!r}; choose among {', '.join(allowed)}.")
    if rule.cooldown_steps < 0:
        raise UserError(f"{name}.cooldown_steps={rule.cooldown_steps} must be >= 0.")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NonFinite:
    """A NaN or Inf loss, gradient norm or parameter norm (the run always stops)."""

    actions: Sequence[str] = _DEFAULT_ACTIONS
    cooldown_steps: int = 0
    name = "non_finite"

    def __post_init__(self) -> None:
        _check(self, DELIVERY_ACTIONS)


@dataclasses.dataclass(frozen=True)
class _Spike:
    """A value more than `sigmas` standard deviations above its rolling mean.

    Attributes:
      sigmas: The threshold, in standard deviations of the window.
      window: How many recent (non-spike) steps the mean and deviation cover.
      min_history: Steps seen before the rule can fire (the window's statistics
        start empty at every start or resume).
      cooldown_steps: Firings within this many steps of the last are dropped.
      actions: What a firing does; "skip_update" drops that step's update
        inside the jitted step (the step counter and data still advance).
    """

    sigmas: float = 6.0
    window: int = 128
    min_history: int = 32
    cooldown_steps: int = 50
    actions: Sequence[str] = _DEFAULT_ACTIONS

    def __post_init__(self) -> None:
        _check(self, (*DELIVERY_ACTIONS, "skip_update", "stop"))
        name = type(self).__name__
        if self.sigmas <= 0 or self.window < 2 or not 2 <= self.min_history:
            raise UserError(f"{name} needs sigmas > 0, window >= 2 and min_history >= 2 (got "
                            f"{self.sigmas}, {self.window}, {self.min_history}).")

    @property
    def skips_update(self) -> bool:
        return "skip_update" in self.actions


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossSpike(_Spike):
    """The training loss jumps above its rolling window (6 sigma over 128 steps by default)."""

    name = "loss_spike"
    signal = "loss"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GradNormSpike(_Spike):
    """The gradient's global norm (before clipping) jumps above its rolling window."""

    name = "grad_norm_spike"
    signal = "grad_norm"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ThroughputDrop:
    """Tokens/s below `fraction` of the median of recent logged intervals.

    Intervals holding compilation (the first `warmup_intervals`), an
    evaluation or a checkpoint save are not measured (those hooks exclude
    their time). `sustained` consecutive slow intervals are needed to fire.
    """

    fraction: float = 0.5
    window: int = 50
    min_history: int = 20
    warmup_intervals: int = 2
    sustained: int = 5
    cooldown_steps: int = 500
    actions: Sequence[str] = _DEFAULT_ACTIONS
    name = "throughput_drop"

    def __post_init__(self) -> None:
        _check(self, (*DELIVERY_ACTIONS, "stop"))
        if not 0 < self.fraction < 1:
            raise UserError(f"ThroughputDrop.fraction={self.fraction} must be in (0, 1).")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StallWatchdog:
    """No step finished within `multiple` x the median step time (and `min_seconds`).

    Checked from its own thread every `poll_seconds`. On firing it writes every
    thread's stack (`faulthandler`) to the log and to
    `<model_dir>/stall_stacks.txt`. With "stop" it asks the loop to save and
    stop; if no step finishes within `stop_grace_seconds` the process exits
    with `EXIT_CODE_STALLED` without saving. `min_seconds` must exceed the
    longest pause between steps that is not a stall (an evaluation, a save).
    """

    multiple: float = 10.0
    min_seconds: float = 600.0
    min_history: int = 5
    poll_seconds: float = 1.0
    stop_grace_seconds: float = 300.0
    cooldown_steps: int = 0
    actions: Sequence[str] = _DEFAULT_ACTIONS
    name = "stall"

    def __post_init__(self) -> None:
        _check(self, (*DELIVERY_ACTIONS, "stop"))
        if self.multiple <= 1 or self.min_seconds < 0 or self.poll_seconds <= 0:
            raise UserError("StallWatchdog needs multiple > 1, min_seconds >= 0 and "
                            "poll_seconds > 0.")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalRegression:
    """An evaluation metric worse than the best so far by more than `tolerance` (relative).

    Attributes:
      metric: "eval/NAME" (held-out evaluation) or "TASK/NAME" (the task evaluator).
      mode: "min" when lower is better (losses), "max" when higher is.
    """

    metric: str = "eval/loss"
    mode: str = "min"
    tolerance: float = 0.1
    cooldown_steps: int = 0
    actions: Sequence[str] = _DEFAULT_ACTIONS
    name = "eval_regression"

    def __post_init__(self) -> None:
        _check(self, (*DELIVERY_ACTIONS, "stop"))
        if self.mode not in ("min", "max"):
            raise UserError(f"EvalRegression.mode={self.mode!r} must be 'min' or 'max'.")


Rule = NonFinite | LossSpike | GradNormSpike | ThroughputDrop | StallWatchdog | EvalRegression


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Alerting:
    """Which rules watch a run and where their alerts go (`train.alerting`).

    Attributes:
      rules: The rules, at most one of each kind; None: one of every kind, each
        as its own gin bindings make it (`LossSpike.sigmas = 4.0`).
      webhook_url: POST alerts here (rules whose actions include "webhook").
      webhook_format: "slack" (`{"text": ...}`) or "json" (the alert record).
      webhook_timeout_s: Per request, from a background thread.
      webhook_queue_size: Alerts beyond this many waiting are dropped.
    """

    rules: Sequence[Rule] | None = None
    webhook_url: str | None = None
    webhook_format: str = "slack"
    webhook_timeout_s: float = 5.0
    webhook_queue_size: int = 100

    def __post_init__(self) -> None:
        rules = self.rules if self.rules is not None else (
            NonFinite(), LossSpike(), GradNormSpike(), ThroughputDrop(), StallWatchdog(),
            EvalRegression())
        object.__setattr__(self, "rules", tuple(rules))
        kinds = [type(rule).__name__ for rule in self.rules]
        duplicated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
        if duplicated:
            raise UserError(f"Alerting.rules has more than one {', '.join(duplicated)}; keep one "
                            "of each.")
        if self.webhook_format not in WEBHOOK_FORMATS:
            raise UserError(f"Alerting.webhook_format={self.webhook_format!r} must be one of "
                            f"{', '.join(WEBHOOK_FORMATS)}.")
        if self.webhook_timeout_s <= 0 or self.webhook_queue_size < 1:
            raise UserError("Alerting.webhook_timeout_s must be > 0 and webhook_queue_size >= 1.")

    def spike_rules(self) -> tuple[LossSpike | GradNormSpike, ...]:
        """The rules whose statistics the jitted step computes (`spike_statistics`)."""
        return tuple(rule for rule in self.rules if isinstance(rule, (LossSpike, GradNormSpike)))

    def rule(self, kind: type) -> Rule | None:
        """The rule of this kind, or None when it is not watched."""
        return next((rule for rule in self.rules if isinstance(rule, kind)), None)
