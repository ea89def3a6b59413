"""The multi-host path, exercised with two local `jax.distributed` processes.

Each process owns 2 of 4 CPU devices and reads only its half of every batch;
`host_local_to_global` assembles the global batch. The losses must equal a
single process that owns all 4 devices and reads whole batches: that reference
runs here, in the test process, on 4 of its 8 devices while the two workers run.
The reference reads the split with seqio and snapshots it; the workers read the
snapshot (`LMBatches.snapshot_dir`) without importing TensorFlow.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest
from multihost_worker import batches, train_losses

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    return env


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("multihost") / "corpus.txt"
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}" for i in range(400)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_two_processes_train_like_one(tmp_path, text_file):
    port = _free_port()
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    data = batches(text_file=str(text_file))  # The reference's, through seqio.
    snapshot = data.save_snapshot(str(tmp_path / "snapshot"))
    procs = []
    try:
        for i in range(2):
            with open(logs[i], "w") as log:  # A file, so output never blocks a worker.
                procs.append(subprocess.Popen(
                    [sys.executable, WORKER, str(i), "2", str(port), snapshot, str(outs[i])],
                    env=_env(), stdout=log, stderr=subprocess.STDOUT))
        # The single-host reference, computed here while the two workers start up and train.
        reference = train_losses(data, devices=jax.devices()[:4])
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log.read_text()[-3000:]

    results = [json.loads(out.read_text()) for out in outs]
    assert [r["process_count"] for r in results] == [2, 2]
    assert [r["devices"] for r in results] == [4, 4]
    assert [r["local_devices"] for r in results] == [2, 2]
    assert [r["imported_tensorflow"] for r in results] == [False, False]
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["losses"] == pytest.approx(reference, rel=1e-5)
