"""The multi-host path, exercised with two local `jax.distributed` processes.

Each process owns 2 of 4 CPU devices and reads only its half of every batch;
`host_local_to_global` assembles the global batch. The losses must equal a
single process that owns all 4 devices and reads whole batches.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

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
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), "2", str(port), str(text_file),
                               str(outs[i])], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    single_out = tmp_path / "single.json"
    single = subprocess.run([sys.executable, WORKER, "0", "1", "0", str(text_file), str(single_out)],
                            env=_env(), capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]

    results = [json.loads(out.read_text()) for out in outs]
    reference = json.loads(single_out.read_text())
    assert [r["process_count"] for r in results] == [2, 2]
    assert [r["devices"] for r in results] == [4, 4]
    assert [r["local_devices"] for r in results] == [2, 2]
    assert reference["devices"] == 4 and reference["process_count"] == 1
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
