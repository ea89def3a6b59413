"""Runs the processes of one multi-host run together, as a group.

Each process's output is shown line by line with its index in front (`[1] ...`),
so interleaved hosts stay readable. When one process fails the others are
stopped: the survivors would otherwise wait forever at their next collective.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

STOP_GRACE_S = 10.0


def run_group(commands: Sequence[Sequence[str]], *, env: Mapping[str, str] | None = None,
              out: TextIO | None = None, poll_s: float = 0.2) -> int:
    """Runs every argv at once; returns 0, or the exit status of the first that failed.

    Args:
      commands: one argv per process, started in order.
      env: the processes' environment (default: this one's).
      out: where their prefixed output goes (default: stdout).
      poll_s: how often to check on them.
    """
    out = sys.stdout if out is None else out
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    try:
        for index, argv in enumerate(commands):
            # No stdin: several `ssh -tt` must not share (and garble) this terminal.
            proc = subprocess.Popen(list(argv), env=None if env is None else dict(env),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1, errors="replace")
            procs.append(proc)
            reader = threading.Thread(target=_copy_lines, args=(proc, f"[{index}] ", out, lock),
                                      daemon=True)
            reader.start()
            readers.append(reader)
        status = _wait_all(procs, poll_s)
    finally:
        _stop(procs)
        for reader in readers:
            reader.join(timeout=5)
    return status


def _wait_all(procs: list[subprocess.Popen], poll_s: float) -> int:
    """Waits until all exit 0 (returns 0) or one fails (returns its status)."""
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            return failed[0]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(poll_s)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to the processes still running (they save and exit), SIGKILL after a grace."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _copy_lines(proc: subprocess.Popen, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            out.write(prefix + line)
            out.flush()
