"""The shipped monitoring config (deploy/monitoring/): rules pass promtool, every alert is
unit-tested, and every metric a rule or dashboard uses is one our code exports.

Exported names are read from real `/metrics` pages: a real `llmos` server (tiny random
model, after one completion) and the trainer's endpoint (`TrainMetricsExporter` fed the
metrics a run logs). promtool comes from tools/promtool.sh (tools/test.sh runs it).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import urllib.request

import httpx
import pytest
import yaml
from serving_api_helpers import tiny_served_model

from llmos_jax.errors import UserError
from llmos_jax.monitoring.train_exporter import TrainMetricsExporter
from llmos_jax.serving.server import EngineOptions, background_server

DEPLOY = pathlib.Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
DASHBOARDS = (DEPLOY / "grafana-serving.json", DEPLOY / "grafana-training.json")
METRIC_NAME = re.compile(r"\bllmos_[a-z0-9_]+\b")


def promtool() -> str:
    path = shutil.which(os.environ.get("PROMTOOL", "promtool"))
    assert path, "promtool is missing: run tools/promtool.sh (tools/test.sh does)"
    return path


def test_rules_pass_promtool_check_and_unit_tests():
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    tested = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=DEPLOY,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]}
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    assert fired == alerts
    # Quiet: every test's healthy series raise nothing (the expectations list only the
    # faulty series), and most alerts also have an explicit "not yet" case.
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert len(quiet) >= 5


def names_used() -> dict[str, set[str]]:
    """Metric names in the rules' expressions and in each dashboard's queries."""
    used = {"alerts.yml": {name for group in yaml.safe_load(RULES.read_text())["groups"]
                           for rule in group["rules"]
                           for name in METRIC_NAME.findall(rule["expr"])}}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        assert exprs, path
        used[path.name] = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    return used


def exported_names(page: str) -> set[str]:
    """Sample names, and the names `# TYPE` declares (a labelled counter with no sample yet,
    like `llmos_request_rejected_total` before the first rejection, is still exported)."""
    samples = {line.split("{")[0].split(" ")[0] for line in page.splitlines()
               if line and not line.startswith("#")}
    declared = {line.split()[2] for line in page.splitlines() if line.startswith("# TYPE ")}
    return samples | declared


@pytest.fixture(scope="module")
def serving_page() -> str:
    options = EngineOptions(max_slots=1, max_queue=4, prefill_chunk=16)
    with background_server(tiny_served_model(context=64), engine_options=options) as server:
        answer = httpx.post(server.base_url + "/v1/completions", timeout=60,
                            json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
        assert answer.status_code == 200
        return httpx.get(server.base_url + "/metrics").text


@pytest.fixture(scope="module")
def training_page() -> str:
    exporter = TrainMetricsExporter(0)
    try:
        logged = {"loss": 2.5, "accuracy": 0.3, "learning_rate": 1e-3, "grad_norm": 0.7,
                  "param_norm": 12.0, "step_time": 0.05, "tokens_per_second": 5000.0,
                  "mfu": 0.01, "loss_spikes": 1.0, "grad_norm_spikes": 0.0,
                  "skipped_updates": 1.0}
        exporter.update(logged, step=10)
        exporter.update({"eval_loss": 2.6})
        exporter.count_alert("loss_spike")
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics") as page:
            return page.read().decode()
    finally:
        exporter.close()


def test_training_endpoint_serves_base_units(training_page):
    values = dict(re.findall(r"^(llmos_train_[a-z_]+(?:\{[^}]*\})?) (\S+)$", training_page,
                             re.M))
    assert float(values["llmos_train_step"]) == 10
    assert float(values["llmos_train_step_time_seconds"]) == 0.05
    assert float(values["llmos_train_mfu_ratio"]) == 0.01
    assert float(values["llmos_train_loss_spikes_total"]) == 1
    assert float(values['llmos_train_alerts_total{rule="loss_spike"}']) == 1
    assert float(values["llmos_train_eval_loss"]) == 2.6


def test_training_endpoint_on_a_busy_port_names_the_flag():
    first = TrainMetricsExporter(0)
    try:
        assert first.host == "127.0.0.1"
        with pytest.raises(UserError, match=f"--metrics_port={first.port}: cannot listen"):
            TrainMetricsExporter(first.port)
    finally:
        first.close()


def test_every_metric_in_rules_and_dashboards_is_exported(serving_page, training_page):
    exported = exported_names(serving_page) | exported_names(training_page)
    assert "llmos_time_to_first_token_seconds_bucket" in exported
    for source, names in names_used().items():
        assert names, source
        assert names <= exported, f"{source} uses names no /metrics page has: " \
                                  f"{sorted(names - exported)}"
