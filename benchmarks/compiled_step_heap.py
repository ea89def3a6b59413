#!/usr/bin/env python
"""A train step in a process that compiled it, against one that loaded it from the cache.

Each sample is a fresh process that builds the small (or large) setup's step
through the framework's builders (`train_step_builders.build_jax`), runs a few
steps, and times `--steps` more. Three kinds of process, alternating:

- `loaded`: the compiled programs come from a filled compilation cache (a
  repeated run);
- `compiled`: an empty cache, so the process runs XLA's compiler (a first run);
- `compiled+retired`: the same, then `runtime.retire_heap_fragments()` after
  the first steps, as `llmos train` does after a step that compiled.

Each prints the median step, the free chunks under 1 MiB left in glibc's main
arena, the voluntary context switches of the timed steps (threads waiting,
among others on malloc's lock) and the resident memory at the end. See
docs/performance.md ("a first run's steps").

    python benchmarks/compiled_step_heap.py --pairs=3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

KINDS = ("compiled", "compiled+retired", "loaded")


def worker(setup_name: str, steps: int, retire: bool) -> dict:
    from llmos_jax import runtime

    runtime.configure_host_runtime()  # as `llmos train` does, before JAX computes
    import resource

    from train_step_builders import SETUPS, build_jax

    _, _, step, _ = build_jax(SETUPS[setup_name], {})
    for _ in range(5):
        step()
    fragments = runtime.free_chunk_count()
    retired = runtime.retire_heap_fragments() if retire else None
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"median_step_ms": 1000 * statistics.median(times),
            "free_chunks_before": fragments, "free_chunks_after": runtime.free_chunk_count(),
            "retired": dataclasses.asdict(retired) if retired else None,
            "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw,
            "resident_mb": resident / 2**20}


def run_worker(kind: str, cache: str, setup: str, steps: int) -> dict:
    env = dict(os.environ, LLMOS_COMPILATION_CACHE=cache)
    command = [sys.executable, __file__, "--worker", f"--setup={setup}", f"--steps={steps}"]
    if kind == "compiled+retired":
        command.append("--retire")
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", default="small", choices=["small", "large"])
    parser.add_argument("--steps", type=int, default=250, help="timed steps per process")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the three processes")
    parser.add_argument("--output", help="write the samples here as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--retire", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.setup, args.steps, args.retire)))
        return 0

    from llmos_jax.monitoring.host_cpu import describe_cpu

    print(describe_cpu().summary(), flush=True)
    samples = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as root:
        filled = os.path.join(root, "filled")
        run_worker("compiled", filled, args.setup, 5)  # fills the cache `loaded` reads
        for pair in range(args.pairs):
            for kind in KINDS:
                cache = filled if kind == "loaded" else os.path.join(root, f"empty{pair}{kind}")
                sample = run_worker(kind, cache, args.setup, args.steps)
                samples[kind].append(sample)
                print(f"round {pair + 1} {kind:17s} median step {sample['median_step_ms']:.1f} ms,"
                      f" free chunks {sample['free_chunks_before']} -> "
                      f"{sample['free_chunks_after']}, voluntary switches "
                      f"{sample['voluntary_switches']}, resident {sample['resident_mb']:.0f} MB"
                      + (f", retired {sample['retired']['chunks']} blocks in "
                         f"{sample['retired']['rounds']} rounds, "
                         f"{sample['retired']['seconds']:.2f} s" if sample["retired"] else ""),
                      flush=True)
    for kind in KINDS:
        steps = [s["median_step_ms"] for s in samples[kind]]
        print(f"{kind:17s} median of medians {statistics.median(steps):.1f} ms "
              f"({', '.join(f'{x:.1f}' for x in steps)})")
    if args.output:
        with open(args.output, "w") as out:
            json.dump({"cpu": describe_cpu().as_dict(), "setup": args.setup,
                       "steps": args.steps, "samples": samples}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
