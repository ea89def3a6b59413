"""`RunMonitoring`: a run's alerting and Prometheus endpoint, built from its config.

`trainer.train` enters one per run. It builds the dispatcher (log,
`alerts.jsonl`, webhook), the alert hooks (`alert_hooks`) and, with
`train.metrics_port`, the Prometheus endpoint;. On exit it drains the
webhook (at most one timeout) and closes the endpoint; a run that a rule
stopped (after the loop saved its checkpoint) then exits with the rule's
status code (`alert_rules.EXIT_CODE_*`).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Callable, Mapping

from llmos_jax.monitoring.alert_delivery import AlertDispatcher, WebhookSender
from llmos_jax.monitoring.metrics_writer import MetricsWriter
from llmos_jax.training.alert_hooks import (EvalRegressionAlerts, MetricAlerts,
                                            StallWatchdogHook, StepStamp)
from llmos_jax.training.alert_rules import (EXIT_CODE_ALERT_STOP, EXIT_CODE_STALLED, Alerting,
                                            EvalRegression, StallWatchdog)
from llmos_jax.training.hooks import Schedule, TrainHook

log = logging.getLogger("llmos_jax.alerts")


class RunMonitoring:
    """Alert hooks, delivery and the metrics endpoint of one run (a context manager).

    Args:
      alerting: The rules and webhook (None: no rule; the endpoint may still run).
      metrics_port: Serve Prometheus metrics at this port (0: any free one);
        None: no endpoint.
      metrics_host: The address the endpoint binds.
      model_dir: Where `alerts.jsonl` and stall stacks go (None on hosts other
        than the first: they alert nowhere but still stop when told).
      writer: Alert scalars go to its `alerts` split.
      logged: The logging schedule (`train.log_every`).
      request_stop: Makes the loop save and stop after the current step.
      eval_metrics: The latest evaluation metrics ("eval/loss", "TASK/NAME").
    """

    def __init__(self, alerting: Alerting | None, *, metrics_port: int | None,
                 metrics_host: str = "127.0.0.1",
                 model_dir: pathlib.Path | None, writer: MetricsWriter, logged: Schedule,
                 request_stop: Callable[[], None],
                 eval_metrics: Callable[[], Mapping[str, float]],
                 flops_per_token: float | None, peak_flops: float):
        self.alerting = alerting
        self.stopped_by: str | None = None
        self._request_stop = request_stop
        self.exporter = None
        if metrics_port is not None:
            from llmos_jax.monitoring.train_exporter import TrainMetricsExporter  # prometheus_client
            self.exporter = TrainMetricsExporter(metrics_port, metrics_host)
        if self.exporter is not None:
            log.info("training metrics for Prometheus at http://%s:%d/metrics",
                     self.exporter.host, self.exporter.port)
        webhook = None
        if alerting is not None and alerting.webhook_url and model_dir is not None:
            webhook = WebhookSender(alerting.webhook_url, body_format=alerting.webhook_format,
                                    timeout_s=alerting.webhook_timeout_s,
                                    queue_size=alerting.webhook_queue_size)
        # Every host checks the rules (each must stop when told); only the first reports.
        self.dispatcher = AlertDispatcher(model_dir, webhook=webhook,
                                          log_alerts=model_dir is not None)
        if self.exporter is not None:
            self.dispatcher.add_listener(lambda alert: self.exporter.count_alert(alert.rule))
        self.first_hooks: list[TrainHook] = []
        self.last_hooks: list[TrainHook] = []
        self._watchdog: StallWatchdogHook | None = None
        if alerting is None and self.exporter is None:
            return
        if self.exporter is not None:
            self.first_hooks.append(StepStamp(self.exporter))
        rules = alerting if alerting is not None else Alerting(rules=())
        self._metric_alerts = MetricAlerts(logged, rules, self.dispatcher, self._stop,
                                           exporter=self.exporter, writer=writer,
                                           flops_per_token=flops_per_token,
                                           peak_flops=peak_flops)
        self.first_hooks.append(self._metric_alerts)
        stall = rules.rule(StallWatchdog)
        if stall is not None:
            self._watchdog = StallWatchdogHook(stall, self.dispatcher, self._stop, model_dir)
            self.first_hooks.append(self._watchdog)
        regression = rules.rule(EvalRegression)
        if regression is not None or self.exporter is not None:
            self.last_hooks.append(EvalRegressionAlerts(
                regression, self.dispatcher, eval_metrics,
                self._stop, exporter=self.exporter))

    def _stop(self, rule: str, step: int) -> None:
        if self.stopped_by is None:
            self.stopped_by = rule
            log.error("alert rule %s stops the run after step %d: it saves a checkpoint at the "
                      "next step and exits", rule, step)
        self._request_stop()

    def __enter__(self) -> RunMonitoring:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
        if self.first_hooks:
            self._metric_alerts.write_alert_scalars()
        self.dispatcher.close()
        if self.exporter is not None:
            self.exporter.close()
        if exc_type is None and self.stopped_by is not None:
            code = EXIT_CODE_STALLED if self.stopped_by == "stall" else EXIT_CODE_ALERT_STOP
            log.error("stopped by alert rule %s after saving its checkpoint; exit status %d",
                      self.stopped_by, code)
            raise SystemExit(code)
