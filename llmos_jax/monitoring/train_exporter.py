"""The trainer's Prometheus endpoint: `llmos_train_*` metrics in base units.

`TrainMetricsExporter` serves `/metrics` from its own registry on a
background thread (bound to 127.0.0.1 unless told otherwise: training hosts
are rarely meant to be reachable from outside). Values are the latest logged
ones, so a scrape never touches the device. Names:

- gauges `llmos_train_step`, `llmos_train_loss`, `llmos_train_learning_rate`,
  `llmos_train_grad_norm`, `llmos_train_param_norm`,
  `llmos_train_tokens_per_second`, `llmos_train_step_time_seconds`,
  `llmos_train_mfu_ratio`, `llmos_train_eval_loss`,
  `llmos_train_last_step_timestamp_seconds` (when the loop last finished a
  step, stamped every step from the host clock: what a "stalled" alert
  compares with `time()`);
- counters `llmos_train_loss_spikes_total`, `llmos_train_grad_norm_spikes_total`,
  `llmos_train_skipped_updates_total` and `llmos_train_alerts_total{rule}`.
"""

from __future__ import annotations

import threading
import time
from typing import Mapping

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmos_jax.errors import UserError

# metric name suffix -> (key in the logged train scalars, help text)
GAUGES = {
    "step": ("step", "Optimizer steps taken."),
    "loss": ("loss", "Training loss of the latest logged step."),
    "learning_rate": ("learning_rate", "Learning rate of the latest update."),
    "grad_norm": ("grad_norm", "Global gradient norm (before clipping)."),
    "param_norm": ("param_norm", "Global parameter norm."),
    "tokens_per_second": ("tokens_per_second", "Training throughput over the latest interval."),
    "step_time_seconds": ("step_time", "Seconds per step over the latest interval."),
    "mfu_ratio": ("mfu", "Model FLOPs utilisation, 0 to 1."),
    "eval_loss": ("eval_loss", "Held-out loss of the latest evaluation."),
    "last_step_timestamp_seconds": ("time", "Unix time when the loop last finished a step."),
}
# cumulative counts carried in the step metrics
COUNTERS = {
    "loss_spikes": ("loss_spikes", "Loss spikes detected since the run (re)started."),
    "grad_norm_spikes": ("grad_norm_spikes", "Gradient-norm spikes since the run (re)started."),
    "skipped_updates": ("skipped_updates", "Updates skipped by a spike rule since (re)start."),
}
PREFIX = "llmos_train_"


class _TrainCollector(Collector):
    def __init__(self):
        self.values: dict[str, float] = {}
        self.alerts: dict[str, int] = {}
        self.lock = threading.Lock()

    def collect(self):
        with self.lock:
            values, alerts = dict(self.values), dict(self.alerts)
        for suffix, (key, doc) in GAUGES.items():
            if key in values:
                yield GaugeMetricFamily(PREFIX + suffix, doc, value=values[key])
        for suffix, (key, doc) in COUNTERS.items():
            yield CounterMetricFamily(PREFIX + suffix, doc, value=values.get(key, 0.0))
        family = CounterMetricFamily(PREFIX + "alerts", "Alerts fired, by rule.", labels=["rule"])
        for rule, count in sorted(alerts.items()):
            family.add_metric([rule], count)
        yield family


class TrainMetricsExporter:
    """Serves the run's latest metrics at `http://host:port/metrics`.

    Args:
      port: The port; 0 picks a free one (read it back from `port`).
      host: The address to bind; 127.0.0.1 unless the scraper is elsewhere.

    Raises:
      UserError: the port cannot be bound.
    """

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        self._collector = _TrainCollector()
        self.registry.register(self._collector)
        try:
            self._server, self._thread = start_http_server(port, addr=host,
                                                           registry=self.registry)
        except OSError as error:
            raise UserError(f"--metrics_port={port}: cannot listen on {host}:{port} ({error}); "
                            "choose a free port (0 picks one) or fix train.metrics_host.") \
                from error
        self.host, self.port = host, self._server.server_port

    def update(self, scalars: Mapping[str, float], *, step: int | None = None) -> None:
        """Records the latest scalars; with `step`, a logged train step that just finished."""
        with self._collector.lock:
            self._collector.values.update({k: float(v) for k, v in scalars.items()})
            if step is not None:
                self._collector.values["step"] = float(step)
                self._collector.values["time"] = time.time()

    def mark_step(self, step: int) -> None:
        """Stamps a finished step (every step: host time only, nothing from the device)."""
        with self._collector.lock:
            self._collector.values["step"] = float(step)
            self._collector.values["time"] = time.time()

    def count_alert(self, rule: str) -> None:
        with self._collector.lock:
            self._collector.alerts[rule] = self._collector.alerts.get(rule, 0) + 1

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
