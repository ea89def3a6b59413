"""The hooks that turn `alert_rules` into alerts, and the stall watchdog's thread.

- `MetricAlerts` (on the logging schedule, before the divergence guard):
  non-finite values, the spike counts the jitted step carried
  (`spike_statistics`), throughput against its rolling median; it also
  feeds the Prometheus endpoint and writes alert scalars to the `alerts`
  split of `metrics.jsonl`/TensorBoard.
- `EvalRegressionAlerts` (every step, after the evaluation hooks): a new
  evaluation worse than the best so far.
- `StepStamp` (every step, with the Prometheus endpoint): stamps the host
  time of each finished step, which the `LlmosTrainingStalled` alert
  compares with one step's time (a stamp only at logged steps would age by
  `log_every` steps between logs).
- `StallWatchdogHook`: each step stamps the time; a daemon thread fires when
  no step finished within the rule's limit, dumps every thread's stack and,
  with "stop", asks the loop to save and stop.

None of them fetches anything from the device except through
`StepContext.host_metrics()` at logged steps, which the metrics logger
fetches anyway.
"""

from __future__ import annotations

import collections
import faulthandler
import logging
import math
import os
import pathlib
import statistics
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Mapping

from llmos_jax.monitoring.alert_delivery import Alert, AlertDispatcher
from llmos_jax.monitoring.flops import mfu
from llmos_jax.monitoring.metrics_writer import MetricsWriter
from llmos_jax.training.alert_rules import (EXIT_CODE_STALLED, Alerting, EvalRegression,
                                            GradNormSpike, LossSpike, NonFinite, StallWatchdog,
                                            ThroughputDrop)
from llmos_jax.training.hooks import Schedule, StepContext

if TYPE_CHECKING:  # prometheus_client is only needed with train.metrics_port
    from llmos_jax.monitoring.train_exporter import TrainMetricsExporter

log = logging.getLogger("llmos_jax.alerts")
STALL_STACKS_FILENAME = "stall_stacks.txt"
ALERTS_SPLIT = "alerts"
_NON_FINITE_SIGNALS = ("loss", "grad_norm", "param_norm")


class StepStamp:
    """Tells the Prometheus endpoint that a step finished (host clock, no device fetch)."""

    schedule = Schedule(every=1)

    def __init__(self, exporter: TrainMetricsExporter):
        self._exporter = exporter

    def on_step(self, context: StepContext) -> None:
        self._exporter.mark_step(context.step)

    def on_end(self, context: StepContext) -> None:
        pass


class MetricAlerts:
    """Non-finite, spike and throughput rules on the logged train metrics."""

    def __init__(self, schedule: Schedule, alerting: Alerting, dispatcher: AlertDispatcher,
                 request_stop: Callable[[str, int], None], *,
                 exporter: TrainMetricsExporter | None = None,
                 writer: MetricsWriter | None = None,
                 flops_per_token: float | None = None, peak_flops: float = 0.0):
        self.schedule = schedule
        self._alerting, self._dispatcher, self._request_stop = alerting, dispatcher, request_stop
        self._exporter, self._writer = exporter, writer
        self._flops_per_token, self._peak = flops_per_token, peak_flops
        self._spikes_seen = {"loss": 0.0, "grad_norm": 0.0}
        self._throughput_rule = alerting.rule(ThroughputDrop)
        rule = self._throughput_rule
        self._rates: collections.deque[float] = collections.deque(
            maxlen=rule.window if rule else 1)
        self._intervals = self._slow = 0
        self._pending_scalars: collections.deque[Alert] = collections.deque()
        dispatcher.add_listener(self._pending_scalars.append)

    def _fire(self, rule, alert: Alert) -> None:
        if (self._dispatcher.fire(alert, actions=rule.actions, cooldown_steps=rule.cooldown_steps)
                and "stop" in rule.actions):
            self._request_stop(rule.name, alert.step)

    def on_step(self, context: StepContext) -> None:
        host = context.host_metrics()
        step = context.step
        self._check_non_finite(step, host)
        for kind in (LossSpike, GradNormSpike):
            self._check_spikes(kind, step, host)
        step_time, tokens_per_second = context.throughput.report()
        self._check_throughput(step, tokens_per_second)
        if self._exporter is not None:
            exported = {**host, "step_time": step_time, "tokens_per_second": tokens_per_second}
            if self._flops_per_token is not None:
                exported["mfu"] = mfu(flops_per_token=self._flops_per_token,
                                      tokens_per_second=tokens_per_second,
                                      peak_flops_per_second=self._peak)
            self._exporter.update(exported, step=step)
        self.write_alert_scalars()

    def write_alert_scalars(self) -> None:
        """Alerts (from any thread) as scalars of the `alerts` split, on the main thread."""
        while self._pending_scalars and self._writer is not None:
            alert = self._pending_scalars.popleft()
            self._writer.write_scalars(alert.step, {alert.rule: alert.value}, split=ALERTS_SPLIT)

    def _check_non_finite(self, step: int, host: Mapping[str, float]) -> None:
        rule = self._alerting.rule(NonFinite)
        bad = {name: host[name] for name in _NON_FINITE_SIGNALS
               if name in host and not math.isfinite(host[name])}
        if rule is None or not bad:
            return
        described = ", ".join(f"{name} is {value}" for name, value in bad.items())
        value = next(iter(bad.values()))
        self._fire(rule, Alert(rule.name, step, f"non-finite training values: {described}; the "
                               "run stops and keeps its last good checkpoint", value, math.inf,
                               severity="critical", details={"signals": sorted(bad)}))

    def _check_spikes(self, kind, step: int, host: Mapping[str, float]) -> None:
        rule = self._alerting.rule(kind)
        key = f"{kind.signal}_spikes"
        if rule is None or key not in host or host[key] <= self._spikes_seen[kind.signal]:
            return
        new = int(host[key] - self._spikes_seen[kind.signal])
        self._spikes_seen[kind.signal] = host[key]
        z = host[f"{kind.signal}_spike_zscore"]
        skipped = " (update skipped)" if rule.skips_update else ""
        self._fire(rule, Alert(
            rule.name, step, f"{new} {kind.signal} spike(s) since the last log{skipped}; the "
            f"latest is {z:.1f} standard deviations above the rolling mean (window of "
            f"{rule.window} steps)", z, rule.sigmas,
            details={"spikes_total": int(host[key]),
                     "skipped_updates": int(host.get("skipped_updates", 0))}))

    def _check_throughput(self, step: int, tokens_per_second: float) -> None:
        rule = self._throughput_rule
        self._intervals += 1
        if rule is None or self._intervals <= rule.warmup_intervals:
            return
        if len(self._rates) < rule.min_history:
            self._rates.append(tokens_per_second)
            return
        median = statistics.median(self._rates)
        threshold = rule.fraction * median
        if tokens_per_second >= threshold:
            self._slow = 0
            self._rates.append(tokens_per_second)
            return
        self._slow += 1
        if self._slow >= rule.sustained:
            self._fire(rule, Alert(
                rule.name, step, f"{tokens_per_second:.0f} tokens/s for {self._slow} logged "
                f"intervals, below {rule.fraction:g} x the median {median:.0f}",
                tokens_per_second, threshold, details={"median": median}))

    def on_end(self, context: StepContext) -> None:
        self.write_alert_scalars()


class EvalRegressionAlerts:
    """Fires when a new value of the rule's metric is worse than the best so far.

    With no rule it only passes the held-out loss to the Prometheus endpoint.
    """

    schedule = Schedule(every=1)

    def __init__(self, rule: EvalRegression | None, dispatcher: AlertDispatcher,
                 eval_metrics: Callable[[], Mapping[str, float]],
                 request_stop: Callable[[str, int], None],
                 exporter: TrainMetricsExporter | None = None):
        self._rule, self._dispatcher, self._eval_metrics = rule, dispatcher, eval_metrics
        self._request_stop, self._exporter = request_stop, exporter
        self._last: dict[str, float] = {}
        self.best: float | None = None

    def on_step(self, context: StepContext) -> None:
        metrics = dict(self._eval_metrics())
        if not metrics or metrics == self._last:
            return
        self._last = metrics
        if self._exporter is not None and "eval/loss" in metrics:
            self._exporter.update({"eval_loss": metrics["eval/loss"]})
        rule = self._rule
        value = None if rule is None else metrics.get(rule.metric)
        if value is None or not math.isfinite(value):
            return
        sign = 1.0 if rule.mode == "min" else -1.0
        if self.best is None or sign * value < sign * self.best:
            self.best = value
            return
        threshold = self.best + sign * rule.tolerance * abs(self.best)
        if sign * value > sign * threshold:
            fired = self._dispatcher.fire(Alert(
                rule.name, context.step, f"{rule.metric} = {value:.4g} is worse than the best "
                f"so far ({self.best:.4g}) by more than {rule.tolerance:g}", value, threshold,
                details={"metric": rule.metric, "best": self.best}),
                actions=rule.actions, cooldown_steps=rule.cooldown_steps)
            if fired and "stop" in rule.actions:
                self._request_stop(rule.name, context.step)

    def on_end(self, context: StepContext) -> None:
        pass


class StallWatchdogHook:
    """Stamps each step; its thread fires when no step finished in time.

    The limit is `multiple` x the mean step time over the last 100 steps
    (single intervals mean little: the loop dispatches ahead of the device and
    waits at logged steps), and at least `min_seconds`.
    """

    schedule = Schedule(every=1)

    def __init__(self, rule: StallWatchdog, dispatcher: AlertDispatcher,
                 request_stop: Callable[[str, int], None], model_dir: pathlib.Path | None):
        self._rule, self._dispatcher, self._request_stop = rule, dispatcher, request_stop
        self._stacks_path = None if model_dir is None else model_dir / STALL_STACKS_FILENAME
        self._stamps: collections.deque[tuple[float, int]] = collections.deque(maxlen=100)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._fired_at_step: int | None = None
        self._exit_timer: threading.Timer | None = None
        self._stop_armed = False  # a forced exit is armed once, for the first stalled step

    def on_step(self, context: StepContext) -> None:
        with self._lock:
            self._stamps.append((time.monotonic(), context.step))
            if self._exit_timer is not None:
                # The run moved past the stalled step: the loop saves and stops here,
                # however long the save takes, so no forced exit may cut the save short.
                self._exit_timer.cancel()
                self._exit_timer = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="llmos-stall-watchdog",
                                            daemon=True)
            self._thread.start()

    def limit_seconds(self) -> float | None:
        """The current stall limit (None until `min_history` steps were seen)."""
        with self._lock:
            if len(self._stamps) < max(self._rule.min_history, 2):
                return None
            (first, first_step), (last, last_step) = self._stamps[0], self._stamps[-1]
        mean_step = (last - first) / max(last_step - first_step, 1)
        return max(self._rule.multiple * mean_step, self._rule.min_seconds)

    def _watch(self) -> None:
        while not self._done.wait(self._rule.poll_seconds):
            limit = self.limit_seconds()
            with self._lock:
                last_time, step = self._stamps[-1]
            idle = time.monotonic() - last_time
            if limit is not None and idle > limit and self._fired_at_step != step:
                self._fired_at_step = step
                self._fire(step, idle, limit)

    def _fire(self, step: int, idle: float, limit: float) -> None:
        rule = self._rule
        log.error("no training step finished for %.1fs (limit %.1fs) after step %d; stacks of "
                  "every thread follow", idle, limit, step)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self._stacks_path is not None:
            with open(self._stacks_path, "a", encoding="utf-8") as file:
                file.write(f"--- stall after step {step}: {idle:.1f}s without a step ---\n")
                file.flush()
                faulthandler.dump_traceback(file=file, all_threads=True)
        fired = self._dispatcher.fire(Alert(
            rule.name, step, f"no step finished for {idle:.1f}s after step {step} (limit "
            f"{limit:.1f}s); thread stacks are in the log", idle, limit, severity="critical"),
            actions=rule.actions, cooldown_steps=rule.cooldown_steps)
        if fired and "stop" in rule.actions:
            self._request_stop(rule.name, step)
            with self._lock:
                if self._stop_armed or self._stamps[-1][1] != step:
                    # A step finished since (maybe its final save is what takes long
                    # now): the loop saves and stops by itself.
                    return
                self._stop_armed = True
                self._exit_timer = threading.Timer(rule.stop_grace_seconds, self._exit_unsaved)
                self._exit_timer.daemon = True
                self._exit_timer.start()

    def _exit_unsaved(self) -> None:
        log.error("the stalled run did not reach another step within %.0fs; exiting with "
                  "status %d without saving", self._rule.stop_grace_seconds, EXIT_CODE_STALLED)
        logging.shutdown()
        os._exit(EXIT_CODE_STALLED)

    def close(self) -> None:
        """Stops the thread and any pending forced exit (the loop ended by itself)."""
        self._done.set()
        if self._exit_timer is not None:
            self._exit_timer.cancel()

    def on_end(self, context: StepContext) -> None:
        self.close()
