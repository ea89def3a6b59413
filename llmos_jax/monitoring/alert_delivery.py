"""Delivering alerts: the log, `<model_dir>/alerts.jsonl`, a webhook, and de-duplication.

An `Alert` is one firing of a rule. `AlertDispatcher.fire` drops it when the
same rule fired less than its cool-down ago (in steps), else delivers it to
every action the rule names:

- `"log"`: a WARNING on the `llmos_jax.alerts` logger;
- `"file"`: one JSON line appended to `<model_dir>/alerts.jsonl` (flushed at
  once, so a run that dies next still has it);
- `"webhook"`: a POST from a background thread (`WebhookSender`). The queue is
  bounded and every request has a timeout, so a slow, hanging or failing
  receiver never blocks training: when the queue is full the alert is dropped
  (and counted), and at the end of the run the sender waits at most one
  timeout for what is queued.

Every delivered alert is also passed to the `on_alert` callbacks (the metrics
writer's `alerts` split, the Prometheus counter). Actions that change the run
(`"skip_update"`, `"stop"`) are carried out by the caller; they are not
delivery.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterable, Mapping, Sequence

ALERTS_FILENAME = "alerts.jsonl"
DELIVERY_ACTIONS = ("log", "file", "webhook")
WEBHOOK_FORMATS = ("slack", "json")

log = logging.getLogger("llmos_jax.alerts")


@dataclasses.dataclass(frozen=True)
class Alert:
    """One firing of a rule.

    Attributes:
      rule: The rule's name (`loss_spike`, `stall`, ...).
      step: The training step at which it was detected.
      message: One sentence for a person.
      value: The observed value that crossed the threshold.
      threshold: The threshold it crossed.
      severity: "warning" or "critical".
      time: Seconds since the epoch.
      details: Anything else worth keeping (JSON-serialisable).
    """

    rule: str
    step: int
    message: str
    value: float
    threshold: float
    severity: str = "warning"
    time: float = dataclasses.field(default_factory=time.time)
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """The JSON object written to `alerts.jsonl` (non-finite numbers as strings)."""
        record = dataclasses.asdict(self)
        record["details"] = dict(self.details)
        for key in ("value", "threshold"):
            if not math.isfinite(record[key]):
                record[key] = str(record[key])
        return record


def read_alerts(model_dir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The alerts a run wrote, oldest first (lines that are not JSON are skipped)."""
    path = pathlib.Path(model_dir) / ALERTS_FILENAME
    if not path.exists():
        return []
    alerts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            alerts.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return alerts


class WebhookSender:
    """POSTs alerts from a daemon thread, with a bounded queue and a per-request timeout.

    Args:
      url: Where to POST.
      body_format: "slack" (`{"text": ...}`, what Slack and Mattermost
        incoming webhooks take) or "json" (the alert record itself).
      timeout_s: Per request; also the most `close` waits for the queue.
      queue_size: Alerts waiting beyond this are dropped (counted in `dropped`).
    """

    def __init__(self, url: str, *, body_format: str = "slack", timeout_s: float = 5.0,
                 queue_size: int = 100):
        if body_format not in WEBHOOK_FORMATS:
            raise ValueError(f"webhook format {body_format!r} is not one of {WEBHOOK_FORMATS}")
        self.url, self.body_format, self.timeout_s = url, body_format, timeout_s
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="llmos-alert-webhook", daemon=True)
        self._thread.start()

    def body(self, alert: Alert) -> bytes:
        if self.body_format == "slack":
            text = f"[{alert.severity}] llmos {alert.rule} at step {alert.step}: {alert.message}"
            return json.dumps({"text": text}).encode()
        return json.dumps(alert.as_record()).encode()

    def send(self, alert: Alert) -> None:
        """Queues the alert; never blocks."""
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            log.warning("alert webhook queue is full; dropped the %s alert", alert.rule)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                request = urllib.request.Request(
                    self.url, data=self.body(alert), method="POST",
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                self.sent += 1
            except (OSError, urllib.error.URLError, ValueError) as error:
                self.failed += 1
                log.warning("alert webhook %s failed: %s", self.url, error)
            finally:
                self._queue.task_done()

    def close(self) -> None:
        """Waits up to one timeout for queued alerts, then leaves the thread behind."""
        deadline = time.monotonic() + self.timeout_s
        try:
            self._queue.put(None, timeout=self.timeout_s)
        except queue.Full:
            return
        self._thread.join(max(deadline - time.monotonic(), 0.0))


class AlertDispatcher:
    """De-duplicates alerts within each rule's cool-down and delivers them.

    Args:
      model_dir: Where `alerts.jsonl` goes (None: the "file" action is a no-op,
        e.g. on hosts other than the first).
      webhook: The sender for the "webhook" action (None: not configured).
      on_alert: Called with every delivered alert.
      log_alerts: Whether the "log" action logs (False on hosts other than the
        first, so that an N-host run logs each alert once, not N times).

    Attributes:
      delivered: Every alert delivered, in order.
    """

    def __init__(self, model_dir: pathlib.Path | None, *, webhook: WebhookSender | None = None,
                 on_alert: Iterable[Callable[[Alert], None]] = (), log_alerts: bool = True):
        self._log_alerts = log_alerts
        self._path = None if model_dir is None else pathlib.Path(model_dir) / ALERTS_FILENAME
        self._webhook = webhook
        self._on_alert = list(on_alert)
        self._last_fired: dict[str, int] = {}
        self._lock = threading.Lock()  # the stall watchdog fires from its own thread
        self.delivered: list[Alert] = []

    def add_listener(self, callback: Callable[[Alert], None]) -> None:
        self._on_alert.append(callback)

    def fire(self, alert: Alert, *, actions: Sequence[str], cooldown_steps: int) -> bool:
        """Delivers `alert` unless its rule fired within `cooldown_steps`; True if delivered."""
        with self._lock:
            last = self._last_fired.get(alert.rule)
            if last is not None and alert.step - last < cooldown_steps:
                return False
            self._last_fired[alert.rule] = alert.step
            self.delivered.append(alert)
            if "log" in actions and self._log_alerts:
                log.warning("ALERT %s at step %d: %s", alert.rule, alert.step, alert.message)
            if "file" in actions and self._path is not None:
                with open(self._path, "a", encoding="utf-8") as file:
                    file.write(json.dumps(alert.as_record()) + "\n")
            if "webhook" in actions and self._webhook is not None:
                self._webhook.send(alert)
            for callback in self._on_alert:
                callback(alert)
            return True

    def close(self) -> None:
        if self._webhook is not None:
            self._webhook.close()
