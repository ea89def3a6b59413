"""Model management against a real `mlflow server` on 127.0.0.1, which the test kills mid-run.

A tracked `llmos train` subprocess loses its tracking server after a few
steps: training must go on at full speed, keep every checkpoint and its
export, and say so once; after the server is back, the resumed run continues
the same MLflow run and sends the steps it could not send before. Then the
run's export is registered over HTTP (artifacts through the server's proxy)
and fetched back verified.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import pytest
from registry_helpers import SHORT_STEPS
from test_e2e_train_cli import checkpoint_steps, subprocess_env
from tiny_snapshot import snapshot_train_argv

from llmos_jax.registry.model_uri import ModelUri
from llmos_jax.registry.store import open_store
from llmos_jax.registry.versions import fetch_version, register_export
from llmos_jax.serving.server import free_port

START_TIMEOUT_S = 240


class MlflowServer:
    """`mlflow server` with a SQLite store and proxied artifacts, in its own process group."""

    def __init__(self, root: pathlib.Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        mlflow = pathlib.Path(sys.executable).with_name("mlflow")
        self.process = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "server_artifacts"), "--workers", "1"],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server did not answer within {START_TIMEOUT_S} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.kill()


def _train(model_dir, snapshot, server, home, steps, *extra):
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": server.url, "LLMOS_HOME": str(home)}
    argv = snapshot_train_argv(model_dir, snapshot, *SHORT_STEPS, f"--gin.train.num_steps={steps}",
                               "--gin.train.log_every=1", "--gin.train.checkpoint_every=4",
                               f"--gin.train.eval_every={steps}", "--track", *extra)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _sent_lines(model_dir: pathlib.Path) -> int:
    try:
        return json.loads((model_dir / "mlflow_run.json").read_text())["sent_lines"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_a_server_that_dies_mid_run_costs_seconds_and_loses_nothing(server, tmp_path,
                                                                    monkeypatch, tiny_text):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))  # the download cache
    snapshot = tiny_text[1]  # The runs read a split snapshot: no TensorFlow.
    model_dir = tmp_path / "run"
    # The loop stalls after step 3 until the server is dead, so the kill lands mid-run
    # however fast training is next to the sender.
    release = tmp_path / "server_killed"
    child = _train(model_dir, snapshot, server, tmp_path / "home", 16,
                   "--gin.train.hooks=[@SleepAtStep()]", "--gin.SleepAtStep.step=3",
                   "--gin.SleepAtStep.seconds=300",
                   f"--gin.SleepAtStep.release_file={str(release)!r}")
    killed_at = None
    try:
        deadline = time.monotonic() + 300
        while _sent_lines(model_dir) < 2:  # The server has taken some steps' metrics.
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        server.kill()
        killed_at = time.time()
    finally:
        release.touch()
        if killed_at is None:  # Something above failed: leave no stalled run behind.
            child.kill()
            child.wait()
    _, stderr = child.communicate(timeout=300)
    exited_at = time.time()
    assert child.returncode == 0, stderr[-3000:]
    assert checkpoint_steps(model_dir) == [4, 8, 12, 16]
    assert (model_dir / "export" / "SHA256SUMS.json").is_file()
    assert stderr.count("is unreachable") == 1, stderr[-3000:]
    assert "MLflow was unreachable at the end of training" in stderr
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").open()]
    train_times = [r["time"] for r in records if r["split"] == "train"]
    before = [t for t in train_times if t < killed_at]
    times = [t for t in train_times if t >= killed_at]
    # The run's own pace (a loaded machine slows everything alike): the median interval
    # between logged steps while the server was up.
    pace = statistics.median(b - a for a, b in zip(before, before[1:]))
    # The loop never waits for the dead server: no step after the kill took long, and the
    # end of training waited seconds, not MLflow's default minutes of retries.
    assert all(b - a < 15 + 10 * pace for a, b in zip(times, times[1:])), (pace, times)
    assert exited_at - records[-1]["time"] < 60 + 20 * pace, pace

    run_id = json.loads((model_dir / "mlflow_run.json").read_text())["run_id"]
    server.start()  # Back, with the same database: the resumed run continues the same run.
    child = _train(model_dir, snapshot, server, tmp_path / "home", steps=20)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr[-3000:]
    assert json.loads((model_dir / "mlflow_run.json").read_text())["run_id"] == run_id
    client = open_store(server.url).client
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(1, 21)), steps  # including those logged while it was down
    assert client.get_run(run_id).info.status == "FINISHED"

    # Register over HTTP: the artifacts go through the server, and come back verified.
    store = open_store(server.url)
    version = register_export(store, "served_tiny", model_dir)
    assert version.run_id == run_id and version.source.startswith("mlflow-artifacts:")
    store.client.set_registered_model_alias("served_tiny", "champion", version.version)
    fetched = fetch_version(store, ModelUri("served_tiny", alias="champion"))
    assert fetched.version == str(version.version) and fetched.config_gin.is_file()
    assert sorted(p.name for p in fetched.path.iterdir()) == sorted(
        p.name for p in (model_dir / "export").iterdir())
