"""Each training alert rule fires on a stream that should trigger it and stays quiet on a normal one.

The spike rules run inside a jitted step (`spike_statistics.guard_step`) on a
toy "train step" whose loss and gradient norm the test dictates; the host
rules run as hooks on real `StepContext`s; the webhook goes to a real HTTP
server on 127.0.0.1 (one that answers, and one that hangs).
"""

from __future__ import annotations

import http.server
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.monitoring.alert_delivery import (ALERTS_FILENAME, Alert, AlertDispatcher,
                                                 WebhookSender, read_alerts)
from llmos_jax.monitoring.metrics_writer import MetricsWriter
from llmos_jax.training.alert_hooks import EvalRegressionAlerts, MetricAlerts, StallWatchdogHook
from llmos_jax.training.alert_rules import (Alerting, EvalRegression, GradNormSpike, LossSpike,
                                            NonFinite, StallWatchdog, ThroughputDrop)
from llmos_jax.training.hooks import Schedule, StepContext, Throughput, run_due
from llmos_jax.training.run_monitoring import RunMonitoring
from llmos_jax.training.spike_statistics import guard_step, initial_statistics
from llmos_jax.training.train_state import TrainState


def run_spike_stream(losses, grad_norms, rules):
    """Runs the guarded toy step over the streams; returns (per-step metrics, final params)."""
    def toy_step(state, batch):
        new = TrainState(step=state.step + 1, params={"w": state.params["w"] + 1.0},
                         opt_state={"count": state.opt_state["count"] + 1})
        return new, {"loss": batch["loss"], "grad_norm": batch["grad_norm"],
                     "param_norm": jnp.float32(1.0)}

    step = jax.jit(guard_step(toy_step, rules), donate_argnums=(0, 2))
    state = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(())},
                       opt_state={"count": jnp.zeros((), jnp.int32)})
    stats = initial_statistics(rules)
    history = []
    for loss, grad in zip(losses, grad_norms):
        state, metrics, stats = step(state, {"loss": jnp.float32(loss),
                                             "grad_norm": jnp.float32(grad)}, stats)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return history, float(state.params["w"]), int(state.step)


def normal_stream(n, seed=0, level=2.0, noise=0.02):
    return list(level + noise * np.random.default_rng(seed).standard_normal(n))


def test_spike_rules_fire_in_step_and_skip_only_the_spiked_update():
    losses = normal_stream(60)
    grads = normal_stream(60, seed=1, level=1.0)
    losses[40] = 4.0  # 100 sigma
    grads[50] = 9.0
    rules = (LossSpike(min_history=20, actions=("log", "skip_update")),
             GradNormSpike(min_history=20))
    history, w, step = run_spike_stream(losses, grads, rules)
    assert [h["loss_spikes"] for h in history].index(1.0) == 40
    assert history[-1]["loss_spikes"] == 1.0
    assert [h["grad_norm_spikes"] for h in history].index(1.0) == 50
    assert history[40]["loss_spike_zscore"] > 50
    # Only the loss rule skips: one update dropped, the step counter still advanced.
    assert history[-1]["skipped_updates"] == 1.0
    assert (w, step) == (59.0, 60)


def test_spike_rules_stay_quiet_on_a_normal_stream_and_before_min_history():
    losses = normal_stream(200, seed=3)
    losses[5] = 50.0  # before min_history: the window is not trusted yet
    history, w, _ = run_spike_stream(losses, normal_stream(200, seed=4, level=1.0),
                                     (LossSpike(min_history=20, actions=("skip_update",)),
                                      GradNormSpike(min_history=20)))
    assert history[-1]["loss_spikes"] == 0 and history[-1]["grad_norm_spikes"] == 0
    assert w == 200.0


def context(step, metrics, throughput):
    return StepContext(step=step, state=None, metrics=metrics, last=False, stopping=False,
                       throughput=throughput)


class FakeClockThroughput(Throughput):
    """A `Throughput` whose intervals the test sets (real time would be flaky)."""

    def __init__(self):
        super().__init__(tokens_per_step=1000)
        self.rate = 1000.0

    def report(self):
        return 1000.0 / self.rate, self.rate


def metric_alerts(tmp_path, rules, stops=None):
    dispatcher = AlertDispatcher(tmp_path)
    hook = MetricAlerts(Schedule(every=1), Alerting(rules=rules), dispatcher,
                        lambda rule, step: (stops if stops is not None else []).append(rule))
    return hook, dispatcher


def healthy_metrics(**overrides):
    return {"loss": 2.0, "grad_norm": 1.0, "param_norm": 10.0, **overrides}


def test_throughput_drop_fires_after_sustained_slow_intervals_not_on_a_blip(tmp_path):
    rule = ThroughputDrop(fraction=0.5, min_history=5, warmup_intervals=2, sustained=3,
                          cooldown_steps=100)
    hook, dispatcher = metric_alerts(tmp_path, (rule,))
    throughput = FakeClockThroughput()
    rates = [50.0, 80.0] + [1000.0] * 10 + [300.0] + [1000.0] * 5 + [300.0] * 5
    for step, rate in enumerate(rates, start=1):
        throughput.rate = rate
        hook.on_step(context(step, healthy_metrics(), throughput))
    # compile (first two) and the single slow interval are ignored; the third of
    # the sustained slow intervals fires, once within the cool-down.
    assert [(a.rule, a.step) for a in dispatcher.delivered] == [("throughput_drop", 21)]
    assert dispatcher.delivered[0].threshold == 500.0


def test_non_finite_and_spike_counts_become_alerts_with_cooldown(tmp_path):
    stops = []
    hook, dispatcher = metric_alerts(
        tmp_path, (NonFinite(), LossSpike(cooldown_steps=10, actions=("file", "stop"))), stops)
    throughput = FakeClockThroughput()
    stream = [healthy_metrics(loss_spikes=0.0, loss_spike_zscore=0.0),
              healthy_metrics(loss_spikes=2.0, loss_spike_zscore=8.5),
              healthy_metrics(loss_spikes=3.0, loss_spike_zscore=7.0),  # within cool-down
              healthy_metrics(loss_spikes=3.0, loss_spike_zscore=7.0),
              healthy_metrics(loss=math.nan, loss_spikes=3.0, loss_spike_zscore=7.0)]
    for step, metrics in enumerate(stream, start=1):
        hook.on_step(context(step, metrics, throughput))
    assert [(a.rule, a.step) for a in dispatcher.delivered] == [("loss_spike", 2),
                                                                 ("non_finite", 5)]
    assert dispatcher.delivered[0].value == 8.5 and stops == ["loss_spike"]
    written = read_alerts(tmp_path)
    assert [(a["rule"], a["step"], a["value"]) for a in written] == [
        ("loss_spike", 2, 8.5), ("non_finite", 5, "nan")]


def test_eval_regression_by_direction(tmp_path):
    dispatcher = AlertDispatcher(tmp_path)
    current = {}
    loss_rule = EvalRegressionAlerts(EvalRegression(metric="eval/loss", tolerance=0.1),
                                     dispatcher, lambda: current, lambda *a: None)
    acc_rule = EvalRegressionAlerts(EvalRegression(metric="task/accuracy", mode="max",
                                                   tolerance=0.05), dispatcher,
                                    lambda: current, lambda *a: None)
    for step, values in [(10, {"eval/loss": 3.0, "task/accuracy": 0.5}),
                         (20, {"eval/loss": 2.0, "task/accuracy": 0.6}),
                         (30, {"eval/loss": 2.1, "task/accuracy": 0.58}),  # within tolerance
                         (40, {"eval/loss": 2.5, "task/accuracy": 0.4})]:
        current.clear()
        current.update(values)
        for hook in (loss_rule, acc_rule):
            hook.on_step(context(step, None, None))
    # Step 30 is within tolerance both ways; step 40 regresses both (a cool-down of 0
    # de-duplicates nothing).
    assert [(a.rule, a.step, a.value) for a in dispatcher.delivered] == [
        ("eval_regression", 40, 2.5), ("eval_regression", 40, 0.4)]
    assert loss_rule.best == 2.0 and acc_rule.best == 0.6


def test_stall_watchdog_fires_from_its_thread_and_dumps_stacks(tmp_path):
    dispatcher = AlertDispatcher(tmp_path)
    stops = []
    hook = StallWatchdogHook(StallWatchdog(multiple=3, min_seconds=2.0, min_history=5,
                                           poll_seconds=0.05, actions=("file", "stop"),
                                           stop_grace_seconds=60),
                             dispatcher, lambda rule, step: stops.append((rule, step)), tmp_path)
    throughput = FakeClockThroughput()
    try:
        for step in range(1, 11):  # 10 ms steps: quiet (a loaded machine may pause a second)
            hook.on_step(context(step, None, throughput))
            time.sleep(0.01)
        last_step = time.monotonic()
        assert dispatcher.delivered == []
        while not dispatcher.delivered and time.monotonic() - last_step < 30:
            time.sleep(0.05)  # no step for > max(3 x 10 ms, 2 s)
        assert time.monotonic() - last_step >= 2.0  # not before the limit
        assert [(a.rule, a.step) for a in dispatcher.delivered] == [("stall", 10)]
        assert stops == [("stall", 10)]
        stacks = (tmp_path / "stall_stacks.txt").read_text()
        assert "test_stall_watchdog_fires_from_its_thread" in stacks  # the main thread's frame
    finally:
        hook.close()


# A stalled run with the "stop" action: the stall fires after step 10 (0.5 s limit), the
# run then reaches step 11 (the loop's save-and-stop step), whose save outlasts the 1 s
# grace. The forced exit (status 75) must not cut that save short.
STALL_THEN_SLOW_SAVE = """
import sys, time
from llmos_jax.monitoring.alert_delivery import AlertDispatcher
from llmos_jax.training.alert_hooks import StallWatchdogHook
from llmos_jax.training.alert_rules import StallWatchdog
from llmos_jax.training.hooks import StepContext, Throughput
stops = []
hook = StallWatchdogHook(StallWatchdog(min_seconds=0.5, min_history=5, poll_seconds=0.05,
                                       actions=("stop",), stop_grace_seconds=1.0),
                         AlertDispatcher(None), lambda rule, step: stops.append(step), None)
def step(n):
    hook.on_step(StepContext(step=n, state=None, metrics=None, last=False, stopping=False,
                             throughput=Throughput(1)))
for n in range(1, 11):
    step(n)
while not stops:
    time.sleep(0.05)
step(11)
time.sleep(3.0)  # the save
hook.close()
print("SAVED", stops[0])
"""


def test_a_stall_stop_does_not_force_an_exit_during_the_final_save():
    result = subprocess.run([sys.executable, "-c", STALL_THEN_SLOW_SAVE], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert (result.returncode, result.stdout.strip()) == (0, "SAVED 10"), result.stderr


@pytest.mark.parametrize("first_host", [True, False])
def test_only_the_first_host_logs_an_alert(tmp_path, caplog, first_host):
    """Every host checks the rules; an N-host run logs each alert once, not N times."""
    monitoring = RunMonitoring(Alerting(rules=(NonFinite(),)), metrics_port=None,
                               model_dir=tmp_path if first_host else None,
                               writer=MetricsWriter(tmp_path, enabled=False),
                               logged=Schedule(every=1), request_stop=lambda: None,
                               eval_metrics=dict, flops_per_token=None, peak_flops=0.0)
    with caplog.at_level("WARNING", logger="llmos_jax.alerts"), monitoring:
        run_due(tuple(monitoring.first_hooks),
                context(5, healthy_metrics(loss=math.nan), FakeClockThroughput()))
    assert [a.rule for a in monitoring.dispatcher.delivered] == ["non_finite"]
    assert ("ALERT non_finite at step 5" in caplog.text) == first_host


def test_metrics_endpoint_stamps_every_step_not_only_logged_ones(tmp_path):
    """The stalled-training alert compares this stamp with one step's time."""
    monitoring = RunMonitoring(None, metrics_port=0, model_dir=tmp_path,
                               writer=MetricsWriter(tmp_path, enabled=False),
                               logged=Schedule(every=100, at_last=False), request_stop=lambda: None,
                               eval_metrics=dict, flops_per_token=None, peak_flops=0.0)
    with monitoring:
        url = f"http://127.0.0.1:{monitoring.exporter.port}/metrics"
        hooks = (*monitoring.first_hooks, *monitoring.last_hooks)
        for step in (1, 2, 3):  # none of them logged (metrics=None: nothing is fetched)
            before = time.time()
            run_due(hooks, context(step, None, FakeClockThroughput()))
            page = urllib.request.urlopen(url).read().decode()
            values = dict(re.findall(r"^(llmos_train_[a-z_]+) (\S+)$", page, re.M))
            assert float(values["llmos_train_step"]) == step
            assert before <= float(values["llmos_train_last_step_timestamp_seconds"]) <= time.time()


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records POST bodies; with `hang` set, sleeps before answering."""

    bodies: list = []
    hang = 0.0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.hang)
        type(self).bodies.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    handler = type("Handler", (Receiver,), {"bodies": [], "hang": 0.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_webhook_posts_slack_and_json_bodies(tmp_path, receiver):
    handler, url = receiver
    alert = Alert("loss_spike", 7, "1 loss spike", 8.0, 6.0)
    for body_format in ("slack", "json"):
        sender = WebhookSender(url, body_format=body_format, timeout_s=5)
        sender.send(alert)
        sender.close()
        assert sender.sent == 1
    assert handler.bodies[0] == {"text": "[warning] llmos loss_spike at step 7: 1 loss spike"}
    assert handler.bodies[1]["rule"] == "loss_spike" and handler.bodies[1]["step"] == 7


def test_a_hanging_webhook_never_blocks_the_caller(tmp_path, receiver):
    handler, url = receiver
    handler.hang = 10.0
    sender = WebhookSender(url, timeout_s=0.5, queue_size=2)
    dispatcher = AlertDispatcher(tmp_path, webhook=sender)
    started = time.perf_counter()
    for step in range(20):
        dispatcher.fire(Alert("stall", step, "stalled", 1.0, 0.5), actions=("file", "webhook"),
                        cooldown_steps=0)
    # Far below the 10 s a blocking send would take (generous for a loaded machine).
    assert time.perf_counter() - started < 2.0
    closing = time.perf_counter()
    dispatcher.close()
    assert time.perf_counter() - closing < 4.0  # about one 0.5 s timeout, not the 10 s hang
    assert sender.dropped >= 15 and sender.sent == 0
    assert len((tmp_path / ALERTS_FILENAME).read_text().splitlines()) == 20
