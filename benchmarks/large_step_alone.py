"""The large setup's llmos_jax step alone, back to back: per-step times and page faults.

Diagnoses the run-to-run spread of `compare_train_speed.py --setup=large` (docs/performance.md,
"Loop overhead measured; the large setup re-checked"): prints each step's time, the median,
the minor page faults per steady-state step and the peak RSS.

    NSTEPS=10 python benchmarks/large_step_alone.py
"""
import sys, time, resource
sys.path.insert(0, "benchmarks")
from llmos_jax.runtime import configure_host_runtime
configure_host_runtime()
import compare_train_speed as c
setup = c.SETUPS["large"]
cfg, n, step, holder = c.build_jax(setup, {})
step(); step()
import resource as R
f0=R.getrusage(R.RUSAGE_SELF).ru_minflt
ts = []
for i in range(int(__import__("os").environ.get("NSTEPS", "15"))):
    s = time.perf_counter(); step(); ts.append(time.perf_counter() - s)
print("faults per step", (R.getrusage(R.RUSAGE_SELF).ru_minflt-f0)/int(__import__("os").environ.get("NSTEPS", "15")))
print("large jax alone, per step (ms):", [round(t * 1000) for t in ts])
import statistics; print("median", statistics.median(ts) * 1000, "min", min(ts) * 1000)
ru = resource.getrusage(resource.RUSAGE_SELF); print("minor faults", ru.ru_minflt, "maxrss MB", ru.ru_maxrss / 1024)
