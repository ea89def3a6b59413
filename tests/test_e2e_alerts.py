"""End to end: `llmos train` runs with a fault injected through gin raise the right alerts.

Three real training subprocesses start together (sharing start-up time):

- a learning-rate spike (x1000 for one update): the loss and gradient-norm
  rules fire inside the jitted step, skip the next update, POST to a local
  webhook and stop the run after saving (exit status 70); the trainer's Prometheus
  endpoint is scraped while it runs;
- a NaN learning rate: the non-finite rule alerts (to a webhook receiver that
  hangs, which must not delay the stop), the run stops with status 2 and the
  last good checkpoint survives;
- a step that sleeps past the stall watchdog: every thread's stack is dumped,
  the run saves at the next step and exits with status 75.

The report of the spike and stall runs opens in headless Chromium with the
alerts marked on its curves. A normal run raising no alert is checked on the baseline run of
`test_e2e_train_cli.py` (with its compile, evaluation and checkpoint pauses).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from llmos_jax.serving.server import free_port
from test_serving_playground import _browser as browser
from test_e2e_train_cli import checkpoint_steps, read_metrics, subprocess_env
from tiny_snapshot import snapshot_train_argv

TIMEOUT_S = 300
QUICK = ("--gin.train.num_steps=30", "--gin.train.eval_every=0", "--gin.train.export=False",
         "--gin.train.sample_prompts=[]", "--gin.train.checkpoint_every=5")
LR_FAULT = ("--gin.make_optimizer.learning_rate=@learning_rate_fault()",
            "--gin.learning_rate_fault.schedule=@warmup_then_decay()")


def start_receiver(hang_seconds: float = 0.0):
    """A webhook receiver on 127.0.0.1 that records bodies (after hanging, if asked)."""
    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(hang_seconds)
            bodies.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/alerts", bodies


def scrape_until_exit(process: subprocess.Popen, port: int) -> str:
    """The last /metrics body that had a loss, polled while the run lives."""
    last = ""
    while process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                text = page.read().decode()
            if "llmos_train_loss " in text:
                last = text
        except OSError:
            pass
        time.sleep(0.2)
    return last


def wait_all(processes: dict[str, subprocess.Popen]) -> dict[str, float]:
    """When each process exited (polled every 0.1 s)."""
    ended: dict[str, float] = {}
    deadline = time.time() + TIMEOUT_S
    while len(ended) < len(processes) and time.time() < deadline:
        for name, process in processes.items():
            if name not in ended and process.poll() is not None:
                ended[name] = time.time()
        time.sleep(0.1)
    return ended


def read_alert_lines(model_dir):
    path = model_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory, tiny_text):
    """Runs the three faulty trainings together; returns what each left behind."""
    tmp_path = tmp_path_factory.mktemp("faults")
    snapshot = tiny_text[1]  # The tiny text's split snapshot: no run imports TensorFlow.
    spike_server, spike_url, spike_bodies = start_receiver()
    hang_server, hang_url, _ = start_receiver(hang_seconds=60)
    port = free_port()
    runs = {
        # A gentler peak rate than the tiny config's keeps the healthy steps smooth.
        "spike": snapshot_train_argv(
            tmp_path / "spike", snapshot, *QUICK, *LR_FAULT,
            "--gin.warmup_then_decay.peak_learning_rate=3e-3",
            "--gin.learning_rate_fault.at_step=14", "--gin.learning_rate_fault.multiply=1000.0",
            *(f"--gin.{rule}.{setting}" for rule in ("LossSpike", "GradNormSpike")
              for setting in ("min_history=8", "sigmas=20.0",
                              "actions=['log', 'file', 'webhook', 'skip_update', 'stop']")),
            f"--gin.Alerting.webhook_url='{spike_url}'", "--gin.Alerting.webhook_format='json'",
            f"--metrics_port={port}", "--log_format=json"),
        "nan": snapshot_train_argv(
            tmp_path / "nan", snapshot, *QUICK, *LR_FAULT, "--gin.learning_rate_fault.at_step=12",
            "--gin.learning_rate_fault.nan=True", f"--gin.Alerting.webhook_url='{hang_url}'",
            "--gin.Alerting.webhook_timeout_s=1.0"),
        "stall": snapshot_train_argv(
            # No checkpoint before the stall: a save on a busy machine can take seconds.
            tmp_path / "stall", snapshot, *QUICK, "--gin.train.checkpoint_every=100",
            "--gin.train.hooks=[@SleepAtStep()]",
            "--gin.SleepAtStep.step=12", "--gin.SleepAtStep.seconds=20.0",
            "--gin.StallWatchdog.min_seconds=8.0", "--gin.StallWatchdog.min_history=5",
            "--gin.StallWatchdog.poll_seconds=0.25",
            "--gin.StallWatchdog.actions=['log', 'file', 'stop']"),
    }
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in runs}
    processes = {name: subprocess.Popen(argv, env=subprocess_env(), stdout=logs[name],
                                        stderr=subprocess.STDOUT, text=True)
                 for name, argv in runs.items()}
    try:
        scraped = scrape_until_exit(processes["spike"], port)
        ended = wait_all(processes)
    finally:
        for process in processes.values():
            process.kill()
        spike_server.shutdown()
        hang_server.shutdown()
    return {name: FaultRun(directory=tmp_path / name, returncode=processes[name].returncode,
                           output=(tmp_path / f"{name}.log").read_text(), ended=ended.get(name),
                           alerts=read_alert_lines(tmp_path / name))
            for name in runs}, scraped, spike_bodies


@dataclasses.dataclass
class FaultRun:
    directory: pathlib.Path
    returncode: int
    output: str
    ended: float | None
    alerts: list[dict]


def test_learning_rate_spike_is_caught_in_step_skipped_posted_and_stops_after_saving(fault_runs):
    runs, scraped, webhook_bodies = fault_runs
    spike = runs["spike"]
    assert spike.returncode == 70, spike.output[-3000:]
    # The faulty rate is applied by update 15; its loss and gradient show at step 16.
    assert {a["rule"] for a in spike.alerts} <= {"loss_spike", "grad_norm_spike"}
    assert spike.alerts and {a["step"] for a in spike.alerts} == {16}, spike.alerts
    assert max(a["value"] for a in spike.alerts) > 20
    assert [b["rule"] for b in webhook_bodies] == [a["rule"] for a in spike.alerts]
    records = read_metrics(spike.directory)
    train = {r["step"]: r for r in records if r["split"] == "train"}
    stop_step = 16
    assert train[stop_step]["skipped_updates"] >= 1
    assert max(checkpoint_steps(spike.directory)) == stop_step + 1  # saved, then stopped
    assert max(train) == stop_step + 1
    alert_scalars = {(r["step"], name) for r in records if r["split"] == "alerts"
                     for name in r if name not in ("step", "split", "time")}
    assert alert_scalars == {(a["step"], a["rule"]) for a in spike.alerts}
    # --log_format=json: every log line of ours is a JSON object.
    logged = [json.loads(line) for line in spike.output.splitlines() if line.startswith("{")]
    assert any(entry["logger"] == "llmos_jax.alerts" and "_spike at step 16" in entry["message"]
               for entry in logged)
    # The Prometheus endpoint served the run's metrics in base units.
    values = dict(re.findall(r"^(llmos_train_[a-z_]+) (\S+)$", scraped, re.M))
    assert float(values["llmos_train_step"]) >= 1 and float(values["llmos_train_loss"]) > 0
    assert float(values["llmos_train_tokens_per_second"]) > 0
    assert 0 < float(values["llmos_train_step_time_seconds"]) < 60


def test_nan_alerts_through_a_hanging_webhook_and_keeps_the_last_good_checkpoint(fault_runs):
    nan = fault_runs[0]["nan"]
    assert nan.returncode == 2, nan.output[-3000:]
    assert "training diverged" in nan.output
    (alert,) = nan.alerts
    assert alert["rule"] == "non_finite" and alert["step"] == 13
    assert max(checkpoint_steps(nan.directory)) == 10
    # The receiver hangs for 60 s; the run ended within about its 1 s timeout.
    assert nan.ended - alert["time"] < 20


def test_stall_dumps_stacks_saves_and_exits_with_its_own_status(fault_runs):
    stall = fault_runs[0]["stall"]
    assert stall.returncode == 75, stall.output[-3000:]
    (alert,) = stall.alerts
    assert alert["rule"] == "stall" and alert["step"] == 12 and alert["value"] > 8.0
    stacks = (stall.directory / "stall_stacks.txt").read_text()
    assert "fault_injection.py" in stacks and "Thread" in stacks
    assert "fault_injection.py" in stall.output  # the dump also went to the log
    assert max(checkpoint_steps(stall.directory)) == 13


def test_report_opens_in_chromium_with_alerts_marked(fault_runs, tmp_path):
    runs = fault_runs[0]
    output = tmp_path / "report.html"
    made = subprocess.run([sys.executable, "-m", "llmos_jax", "report",
                           f"--model_dir={runs['spike'].directory}",
                           f"--compare={runs['stall'].directory}", f"--output={output}"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    expected_steps = sorted({a["step"] for name in ("spike", "stall") for a in runs[name].alerts})
    driver, profile = browser()
    try:
        driver.get(output.as_uri())
        images = driver.find_elements(By.CSS_SELECTOR, "img.plot")
        titles = [image.get_attribute("alt") for image in images]
        assert titles == ["Loss", "Learning rate", "Gradient norm", "Tokens per second", "MFU"]
        for image in images:
            assert driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", image) > 300
            assert json.loads(image.get_attribute("data-alert-steps")) == expected_steps
        rows = driver.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")
        shown = sorted((int(row.find_elements(By.TAG_NAME, "td")[1].text),
                        row.find_elements(By.TAG_NAME, "td")[2].text) for row in rows)
        assert shown == sorted((a["step"], a["rule"]) for name in ("spike", "stall")
                               for a in runs[name].alerts)
        assert "train.num_steps = 30" in driver.page_source
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
