"""The large setup's llmos_jax step alone, back to back: per-step times and page faults.

Diagnoses the run-to-run spread of `compare_train_speed.py --setup=large`
(docs/performance.md, "Loop overhead measured; the large setup re-checked"): prints
each step's time, the median, the minor page faults per steady-state step and the
process's peak RSS. Run it several times: processes differ.

    python benchmarks/large_step_alone.py --steps=10
    python benchmarks/large_step_alone.py --steps=8 --per_step   # faults, RSS, heap per step
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llmos_jax.runtime import configure_host_runtime, heap_mib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps after 2 warm-up steps")
    parser.add_argument("--per_step", action="store_true",
                        help="print each step's minor faults, resident set and glibc heap size")
    args = parser.parse_args()
    configure_host_runtime()
    from train_step_builders import SETUPS, build_jax

    _, _, step, _ = build_jax(SETUPS["large"], {})
    step()
    step()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for index in range(args.steps):
        faults_at_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
        if args.per_step:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_at_start
            print(f"step {index}: {times[-1] * 1000:.0f} ms, {faults} minor faults, "
                  f"RSS {_resident_mb()} MB, [heap] {heap_mib()} MB", flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("step ms:", [round(t * 1000) for t in times])
    print(f"median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms; "
          f"minor faults per step {(usage.ru_minflt - faults_before) / args.steps:.0f}; "
          f"peak RSS {usage.ru_maxrss / 1024:.0f} MB")


def _resident_mb() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


if __name__ == "__main__":
    main()
