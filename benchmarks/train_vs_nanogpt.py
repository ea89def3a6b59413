#!/usr/bin/env python
"""Times the whole `llmos train` command against nanoGPT's `train.py` on the same job.

The job is nanoGPT's CPU Shakespeare run (issue 15): 2,000 steps of batch
12 x 64 characters, 4 layers x 128, dropout 0, one 20-batch validation
estimate at the end and one checkpoint at the end. Both sides run as a user
would type them, each in its own process tree, alternating (llmos, nanoGPT,
nanoGPT, llmos, ...) so background load hits both alike. For every run it
records:

- wall time, and CPU time (user + sys) of the whole process tree (`wait4`);
- peak memory: the largest sum of resident set sizes over the process tree,
  sampled every 50 ms (also the largest single process, from `wait4`);
- other processes' CPU use during the run: busy jiffies of the machine
  (`/proc/stat`) minus the tree's own CPU time, as seconds and as a share of
  all cores; and the load average before and after;
- from each command's own log: llmos's median `step_time` over the JSONL
  intervals after the first (which holds compilation; evaluation and
  checkpoint time is excluded by the loop itself), nanoGPT's median
  logged iteration time, and (llmos) the time from launch to the start of
  the training loop (imports, data, initialisation; before the step compiles).

It also prints the CPU model, its flags of interest and a measured float32
matmul peak (numpy, 1024^2, median of 10), and writes everything as JSON.

nanoGPT is a public repository (https://github.com/karpathy/nanoGPT); pass the
path of a checkout. Nothing is copied from it: the benchmark runs its
`data/shakespeare_char/prepare.py` once (on `$LLMOS_DATA_DIR/tinyshakespeare/
input.txt`, copied next to it first so that nothing is downloaded) and then
its `train.py`. nanoGPT needs torch and numpy in the Python that runs this
script (`pip install -e '.[reference]'`).

    LLMOS_DATA_DIR=/path/to/data python benchmarks/train_vs_nanogpt.py /tmp/nanogpt
    python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --repeats=2 --output=out.json
    python benchmarks/train_vs_nanogpt.py /tmp/nanogpt --steps=100   # a quick smoke run

Run it on an otherwise idle machine: the other-process CPU column says how
idle it was.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from llmos_jax.monitoring.host_cpu import describe_cpu

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE_SECONDS = 0.05
JOB_STEPS = 2000  # the job


def llmos_command(model_dir: str, steps: int) -> list[str]:
    """Our side, with only the flags a user would pass (the issue's command at 2,000 steps)."""
    llmos = pathlib.Path(sys.executable).with_name("llmos")
    head = [str(llmos)] if llmos.exists() else [sys.executable, "-m", "llmos_jax"]
    shorter = [] if steps == JOB_STEPS else [
        f"--gin.train.num_steps={steps}", f"--gin.warmup_then_decay.decay_steps={steps}",
        f"--gin.warmup_then_decay.warmup_steps={min(100, steps // 2)}"]
    return [*head, "train", "--gin_file=experiments/shakespeare_char/shakespeare_char_cpu.gin",
            f"--model_dir={model_dir}", *shorter,
            f"--gin.train.eval_every={steps}", "--gin.train.eval_batches=20",
            f"--gin.train.checkpoint_every={steps}", "--gin.train.progress_bar=False",
            "--gin.train.sample_new_tokens=0"]


def nanogpt_command(out_dir: str, steps: int) -> list[str]:
    """nanoGPT's side, as the issue gives it (at 2,000 steps)."""
    shorter = [] if steps == JOB_STEPS else [f"--warmup_iters={min(100, steps // 2)}"]
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
            "--compile=False", "--eval_iters=20", f"--eval_interval={steps}",
            "--log_interval=100", "--block_size=64", "--batch_size=12", "--n_layer=4",
            "--n_head=4", "--n_embd=128", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
            "--dropout=0.0", *shorter, f"--out_dir={out_dir}"]


# ----------------------------------------------------------------------------- machine


def matmul_peak(size: int = 1024, repeats: int = 10) -> float:
    """float32 FLOP/s of a size x size matmul (numpy's BLAS), median of `repeats`."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / statistics.median(seconds)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in pathlib.Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal, less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- process tree


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (Linux /proc)."""
    pids, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        pids.append(pid)
        for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
            try:
                frontier.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return pids


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        try:
            for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_measured(command: list[str], cwd: pathlib.Path, log_path: pathlib.Path,
                 env: dict[str, str] | None = None) -> dict:
    """Runs `command` to completion; its wall, CPU and memory figures and the machine's load."""
    load_before = loadavg()
    busy_before = busy_seconds()
    with open(log_path, "w") as log:
        start = time.perf_counter()
        launched_at = time.time()
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_bytes(process.pid))
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    busy = busy_seconds() - busy_before
    cpu = usage.ru_utime + usage.ru_stime
    other = max(busy - cpu, 0.0)
    return {"command": command, "returncode": process.returncode, "wall_s": wall,
            "cpu_s": cpu, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "peak_tree_rss_mb": peak[0] / 2**20,
            "peak_single_process_rss_mb": usage.ru_maxrss / 1024,
            "other_cpu_s": other, "other_cpu_share": other / (wall * (os.cpu_count() or 1)),
            "load_before": load_before, "load_after": loadavg(), "launched_at": launched_at}


# ----------------------------------------------------------------------------- logs


def llmos_log_figures(model_dir: pathlib.Path, launched_at: float | None = None) -> dict:
    """Median in-loop step time (JSONL intervals after the first), the last eval loss, and
    with `launched_at` (the command's start, epoch seconds) the time to the first log."""
    records = [json.loads(line) for line in
               (model_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("split") == "train" and "step_time" in r]
    if not train:
        return {}
    first = train[0]
    figures = {"median_step_ms": 1000 * statistics.median(r["step_time"] for r in train[1:])
               if len(train) > 1 else None,
               "final_eval_loss": next((r["loss"] for r in reversed(records)
                                        if r.get("split") == "eval" and "loss" in r), None)}
    if launched_at is not None:
        # The first interval starts when the loop does, before the step compiles.
        figures["loop_start_after_s"] = (first["time"] - first["step_time"] * first["step"]
                                         - launched_at)
    return figures


def nanogpt_log_figures(log_text: str, eval_every: int) -> dict:
    """Median logged iteration time (iterations 100, 200, ...; not those timing an
    evaluation) and the last val loss."""
    times = [float(t) for step, t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms",
                                                log_text) if int(step) % eval_every]
    losses = re.findall(r"val loss ([\d.]+)", log_text)
    return {"median_step_ms": statistics.median(times) if times else None,
            "final_eval_loss": float(losses[-1]) if losses else None}


def compilation_cache_dir_of(env: dict[str, str], resolve) -> str | None:
    """The folder llmos will keep compiled programs in under `env` (see `runtime`)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return resolve()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def cache_entries(directory: str | None) -> set[str]:
    if directory is None or not os.path.isdir(directory):
        return set()
    return set(os.listdir(directory))


# ----------------------------------------------------------------------------- main


def prepare_nanogpt_data(nanogpt: pathlib.Path, data_dir: pathlib.Path) -> None:
    """Runs nanoGPT's prepare.py once on our copy of tinyshakespeare (no download)."""
    source = data_dir / "tinyshakespeare" / "input.txt"
    if not source.is_file():
        sys.exit(f"error: {source} is missing; set LLMOS_DATA_DIR to the folder holding "
                 "tinyshakespeare/input.txt")
    target = nanogpt / "data" / "shakespeare_char"
    if not (target / "prepare.py").is_file():
        sys.exit(f"error: {nanogpt} is not a nanoGPT checkout (no data/shakespeare_char/"
                 "prepare.py); clone https://github.com/karpathy/nanoGPT and pass its path")
    if not (target / "input.txt").is_file():
        shutil.copyfile(source, target / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=target, check=True,
                   stdout=subprocess.DEVNULL)


def summarise(runs: list[dict]) -> dict:
    keys = ("wall_s", "cpu_s", "peak_tree_rss_mb", "other_cpu_share", "median_step_ms")
    return {key: statistics.median(r[key] for r in runs if r.get(key) is not None)
            for key in keys if any(r.get(key) is not None for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nanogpt_dir", help="a checkout of github.com/karpathy/nanoGPT")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command")
    parser.add_argument("--steps", type=int, default=JOB_STEPS,
                        help="training steps (2000 is the issue's job; fewer for a smoke run)")
    parser.add_argument("--output", default="train_vs_nanogpt.json", help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the run folders and logs")
    parser.add_argument("--cold", action="store_true",
                        help="give every llmos run an empty compilation cache (a first run); "
                        "by default llmos uses its on-disk cache as a user's repeated runs do")
    args = parser.parse_args(argv)

    nanogpt = pathlib.Path(args.nanogpt_dir).resolve()
    data_dir = pathlib.Path(os.environ.get("LLMOS_DATA_DIR", REPO.parent / "shared" / "data"))
    prepare_nanogpt_data(nanogpt, data_dir)
    cpu = describe_cpu()
    machine = {"cpu": cpu.as_dict(), "matmul_peak_gflops": matmul_peak() / 1e9,
               "python": sys.version.split()[0]}
    print(f"CPU: {cpu.summary()}; fp32 matmul peak "
          f"{machine['matmul_peak_gflops']:.1f} GFLOP/s (numpy 1024^2)", flush=True)

    work = pathlib.Path(tempfile.mkdtemp(prefix="train_vs_nanogpt_"))
    env_note = f"LLMOS_DATA_DIR={data_dir}"
    os.environ["LLMOS_DATA_DIR"] = str(data_dir)
    # Time this checkout's llmos_jax, whatever the environment has installed.
    llmos_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    sys.path.insert(0, str(REPO))
    from llmos_jax.runtime import compilation_cache_dir  # stdlib only: no JAX here
    runs: dict[str, list[dict]] = {"llmos": [], "nanogpt": []}
    order = [("llmos", "nanogpt") if i % 2 == 0 else ("nanogpt", "llmos")
             for i in range(args.repeats)]
    for index, pair in enumerate(order):
        for name in pair:
            folder = work / f"{name}_{index}"
            log_path = work / f"{name}_{index}.log"
            if name == "llmos":
                if args.cold:
                    llmos_env["LLMOS_COMPILATION_CACHE"] = str(work / f"xla_cache_{index}")
                cache = compilation_cache_dir_of(llmos_env, compilation_cache_dir)
                before = cache_entries(cache)
                result = run_measured(llmos_command(str(folder), args.steps), REPO, log_path,
                                      env=llmos_env)
                result["compile_cache"] = cache
                result["compile_cache_new_entries"] = len(cache_entries(cache) - before)
                if result["returncode"] == 0:
                    result.update(llmos_log_figures(folder, result["launched_at"]))
            else:
                result = run_measured(nanogpt_command(str(folder), args.steps), nanogpt,
                                      log_path)
                result.update(nanogpt_log_figures(log_path.read_text(), args.steps))
            if result["returncode"] != 0:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                sys.exit(f"error: {name} run {index} failed (exit {result['returncode']}); "
                         f"log: {log_path}")
            runs[name].append(result)
            step = result.get("median_step_ms")
            if name == "llmos":
                print(f"         compilation cache {result['compile_cache']}: "
                      f"{result['compile_cache_new_entries']} new entries "
                      f"({'compiled' if result['compile_cache_new_entries'] else 'loaded'})")
            print(f"{name:8s} run {index}: wall {result['wall_s']:6.1f} s, cpu "
                  f"{result['cpu_s']:6.1f} s, peak tree RSS {result['peak_tree_rss_mb']:6.0f} MB, "
                  f"median step {step if step is None else round(step, 1)} ms, other processes "
                  f"{100 * result['other_cpu_share']:.0f}% of the CPUs, load "
                  f"{result['load_before']} -> {result['load_after']}", flush=True)
    summary = {name: summarise(items) for name, items in runs.items()}
    ratio = summary["nanogpt"]["wall_s"] / summary["llmos"]["wall_s"]
    print(f"median wall: llmos {summary['llmos']['wall_s']:.1f} s, nanoGPT "
          f"{summary['nanogpt']['wall_s']:.1f} s: nanoGPT/llmos = {ratio:.2f} "
          f"({'llmos faster' if ratio > 1 else 'llmos slower'}); median peak memory llmos "
          f"{summary['llmos']['peak_tree_rss_mb']:.0f} MB, nanoGPT "
          f"{summary['nanogpt']['peak_tree_rss_mb']:.0f} MB")
    result = {"machine": machine, "steps": args.steps, "repeats": args.repeats,
              "environment": env_note, "summary": summary,
              "nanogpt_over_llmos_wall": ratio, "runs": runs}
    pathlib.Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"run folders and logs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
