"""benchmarks/train_vs_nanogpt.py measures a whole process tree and reads both logs right."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import train_vs_nanogpt as bench  # noqa: E402

# A parent that starts a child holding ~150 MB and burning CPU for ~1 s.
TREE = """
import subprocess, sys
subprocess.run([sys.executable, "-c", '''
import time
block = bytearray(150 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
end = time.process_time() + 1.0
while time.process_time() < end:
    pass
time.sleep(0.3)
'''], check=True)
"""


def test_run_measured_counts_the_whole_process_tree(tmp_path):
    result = bench.run_measured([sys.executable, "-c", TREE], tmp_path, tmp_path / "log.txt")
    assert result["returncode"] == 0
    assert result["peak_tree_rss_mb"] >= 150  # the grandchild's memory, sampled in the tree
    assert result["cpu_s"] >= 0.9  # the grandchild's CPU time, through wait4
    assert 0.0 <= result["other_cpu_share"] <= 1.0


def test_log_figures():
    log = ("step 0: train loss 4.1676, val loss 4.1649\niter 0: loss 4.1828, time 900.00ms\n"
           "iter 100: loss 2.5, time 30.00ms, mfu 1.0%\niter 200: loss 2.4, time 40.00ms, mfu 1%\n"
           "iter 300: loss 2.3, time 500.00ms, mfu 1%\nstep 300: train loss 2.2, val loss 2.25\n")
    figures = bench.nanogpt_log_figures(log, eval_every=300)
    assert figures == {"median_step_ms": 35.0, "final_eval_loss": 2.25}


def test_llmos_log_figures(tmp_path):
    records = [{"step": 50, "split": "train", "time": 1010.0, "step_time": 0.1},
               {"step": 100, "split": "train", "time": 1012.0, "step_time": 0.04},
               {"step": 150, "split": "train", "time": 1014.0, "step_time": 0.05},
               {"step": 150, "split": "eval", "time": 1015.0, "loss": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)))
    figures = bench.llmos_log_figures(tmp_path, launched_at=1000.0)
    assert figures["median_step_ms"] == 45.0
    assert figures["loop_start_after_s"] == 5.0
    assert figures["final_eval_loss"] == 2.5
    without_launch = bench.llmos_log_figures(tmp_path)
    assert without_launch == {"median_step_ms": 45.0, "final_eval_loss": 2.5}
