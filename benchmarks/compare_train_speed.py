#!/usr/bin/env python
"""Times llmos_jax's training step against plain PyTorch, alternating, in one run.

The JAX side is the framework's real path: `DecoderLM` with a GPT-2 config,
`make_optimizer` (clip 1.0 + AdamW with the weight-decay mask),
`make_train_step` / `jit_train_step` on a 1-device mesh with the default rules
and buffer donation, as `llmos train` and `tools/bench_train.py` build it, in
a process set up by `llmos_jax.runtime.configure_host_runtime()` as the `llmos`
entry point does. The PyTorch side is `benchmarks/torch_gpt.py` (eager, no
torch.compile). Both use float32 and do the whole step: forward,
cross-entropy, backward, global-norm clip, AdamW update.

Each framework runs in its own worker process (two runtimes in one process
fight over the cores: JAX's worker threads and PyTorch's OpenMP threads
spin-wait on each other, which slows PyTorch by ~15% here). The parent
alternates single steps JAX, PyTorch, PyTorch, JAX, ... with a short pause
between steps, so background load hits both alike; each step is timed to
completion inside its worker (JAX: `block_until_ready` on the new state and
metrics). Prints the median step times, the ratio torch_time / jax_time
(>= 1.0 means llmos_jax is at least as fast), and MFU against float32 matmul
peaks measured in the same run.

    python benchmarks/compare_train_speed.py                      # small and large
    python benchmarks/compare_train_speed.py --setup=small --reps=100
    python benchmarks/compare_train_speed.py --setup=large --reps=20
    python benchmarks/compare_train_speed.py --setup=small --jax.scan_layers=False
    python benchmarks/compare_train_speed.py --setup=large --reps=6 --block=4 --worker_pairs=5

A fresh pair of worker processes can land a few percent faster or slower than the
last (the large setup's JAX step has ranged over +-6% between processes: memory
placement, not code), so `--worker_pairs=N` starts N pairs one after another,
alternating inside each as above, and reports every pair's ratio and their median.

Ablations undo one of the framework's CPU speed-ups in the JAX worker
(`--host_allocator=system`, `--jax_scan_unroll=1`, `--jax_attention_grad=autodiff`,
`--jax_dense=einsum`, `--no_donate`, `--jax.dtype=bfloat16`, or `--jax_pythonpath=DIR` for an older
exported tree); `--reference=jax` times them against the default JAX step
instead of PyTorch, alternating, so both see the same background load.
`--dropout=0.2` turns dropout on in both models. See docs/performance.md.

PyTorch's eager step is far more sensitive to other processes on the same
cores than XLA's (two OpenMP threads barrier-wait for each other every op), so
run it on an otherwise idle machine; the load average is printed with the
results. Needs PyTorch: `pip install -e '.[reference]'`.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from train_step_builders import SETUPS, build_jax, build_torch, flops_per_token  # noqa: E402

DEFAULT_REPS = {"small": 60, "large": 12}


# ----------------------------------------------------------------------------- workers


def _matmul_peak(framework: str, size: int, repeats: int = 10) -> float:
    """float32 size x size matmul FLOP/s (median of `repeats`) in this worker's framework."""
    if framework == "jax":
        import jax.numpy as jnp

        from llmos_jax.monitoring.peak_flops import measure_matmul_peak
        return measure_matmul_peak(jnp.float32, size=size, repeats=repeats)
    import torch
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / statistics.median(seconds)


def _apply_jax_ablations(args) -> None:
    """Undoes one of the framework's CPU speed-ups in this worker (see docs/performance.md)."""
    if args.jax_scan_unroll:
        from llmos_jax.models import decoder, layer_stack
        # Every family's stack reads it from layer_stack; older trees kept it in decoder.
        owner = layer_stack if hasattr(layer_stack, "layer_scan_unroll") else decoder
        owner.layer_scan_unroll = lambda num_layers: args.jax_scan_unroll
    if args.jax_attention_grad == "autodiff":
        from llmos_jax.models import attention

        def autodiff_attention(q, k, v, mask, dropout_rate=0.0, dropout_key=None):
            return attention._softmax_attention_forward(q, k, v, mask, dropout_rate,
                                                        dropout_key)[0]
        attention.softmax_attention = autodiff_attention
    if args.jax_dense == "einsum":
        import jax.numpy as jnp

        from llmos_jax.models import dense

        def einsum_project(x, kernel, in_features, out_features):
            n_in, n_out = len(in_features), len(out_features)
            contract = dense._LETTERS[x.ndim - n_in: x.ndim]
            out = dense._LETTERS[x.ndim: x.ndim + n_out]
            return jnp.einsum(f"...{contract},{contract}{out}->...{out}", x, kernel)
        dense.project = einsum_project  # trees from before `project` always used the einsum


def worker_main(args, jax_overrides) -> int:
    """Builds one framework's step, then serves `step` / `peak SIZE` / `quit` lines on stdin."""
    setup = SETUPS[args.setup]
    if args.worker == "jax":
        if not args.no_runtime_config:
            from llmos_jax import runtime
            runtime.configure_host_runtime()  # what the `llmos` entry point does first
        import jax
        _apply_jax_ablations(args)
        _, num_params, step, _ = build_jax(setup, jax_overrides, donate=not args.no_donate,
                                           dropout=args.dropout)
        info = {"framework": f"jax {jax.__version__}", "threads": os.cpu_count()}
    else:
        import torch
        num_params, step = build_torch(setup, args.torch_attention, args.torch_adamw,
                                       args.dropout)
        info = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads()}
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    info.update(params=num_params, warmup_seconds=time.perf_counter() - start)
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "step":
            start = time.perf_counter()
            step()
            print(time.perf_counter() - start, flush=True)
        elif command[0] == "peak":
            print(_matmul_peak(args.worker, int(command[1])), flush=True)
    return 0


class Worker:
    """One framework's step in a child process.

    `plain_jax=True` starts the framework's default JAX step (no ablation flags,
    overrides or other code), the reference of `--reference=jax`.
    """

    def __init__(self, kind: str, args, passthrough: list[str], plain_jax: bool = False):
        command = [sys.executable, os.path.abspath(__file__), f"--worker={kind}",
                   f"--setup={args.setup_name}", f"--warmup={args.warmup}",
                   f"--torch_attention={args.torch_attention}",
                   f"--torch_adamw={args.torch_adamw}", f"--dropout={args.dropout}"]
        if plain_jax:
            self._start(kind, command, dict(os.environ))
            return
        command += passthrough
        for flag in ("no_runtime_config", "no_donate"):
            if getattr(args, flag):
                command.append(f"--{flag}")
        command += [f"--jax_scan_unroll={args.jax_scan_unroll}",
                    f"--jax_attention_grad={args.jax_attention_grad}",
                    f"--jax_dense={args.jax_dense}"]
        env = dict(os.environ)
        if kind == "jax" and args.host_allocator == "system":
            env["LLMOS_HOST_ALLOCATOR"] = "system"
        if kind == "jax" and args.jax_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                [os.path.abspath(args.jax_pythonpath)] + env.get("PYTHONPATH", "").split(os.pathsep))
        self._start(kind, command, env)

    def _start(self, kind: str, command: list[str], env: dict) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {kind} worker exited before it was ready: {command}")
        self.info = json.loads(line)

    def ask(self, command: str) -> float:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait()


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _busy_jiffies(pids) -> tuple[int, int]:
    """(CPU jiffies busy on the whole machine, jiffies used by `pids`), Linux only."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]
        ours = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            ours += int(stat[11]) + int(stat[12])  # utime, stime
        return busy, ours
    except (OSError, IndexError, ValueError):
        return 0, 0


def _quartiles(times):
    q = statistics.quantiles(times, n=4)
    return q[0], q[2]


def run_setup(name: str, args, passthrough) -> dict:
    setup = SETUPS[name]
    args.setup_name = name
    jax_worker = Worker("jax", args, passthrough)
    # The "torch" slot holds the reference: PyTorch, or with --reference=jax the
    # framework's default JAX step, so an ablation is timed against it under the same load.
    reference_is_jax = args.reference == "jax"
    torch_worker = Worker("jax" if reference_is_jax else "torch", args, passthrough,
                          plain_jax=reference_is_jax)
    load_before = _loadavg()
    print(f"[{name}] {setup.num_layers} layers x {setup.embed_dim}, {setup.num_heads} heads, "
          f"context {setup.context}, batch {setup.batch}, vocab {setup.vocab}, float32, "
          f"dropout {args.dropout}")
    equal = jax_worker.info["params"] == torch_worker.info["params"]
    print(f"[{name}] parameters: llmos_jax {jax_worker.info['params']:,}  "
          f"torch {torch_worker.info['params']:,}  {'(equal)' if equal else '(DIFFERENT!)'}")
    print(f"[{name}] turns of {args.block} step(s) per side, alternating")
    print(f"[{name}] compile + {args.warmup} warm-up steps: jax "
          f"{jax_worker.info['warmup_seconds']:.1f} s, torch "
          f"{torch_worker.info['warmup_seconds']:.1f} s; torch intra-op threads "
          f"{torch_worker.info['threads']}")
    reps = args.reps or DEFAULT_REPS[name]
    times = {"jax": [], "torch": []}
    order = [("jax", jax_worker), ("torch", torch_worker)]
    pids = [os.getpid(), jax_worker.process.pid, torch_worker.process.pid]
    busy0, ours0 = _busy_jiffies(pids)
    start = time.perf_counter()
    for i in range(reps):
        for key, worker in (order if i % 2 == 0 else order[::-1]):
            time.sleep(args.gap)
            for b in range(args.block):
                seconds = worker.ask("step")
                if b > 0 or args.block == 1:  # a block's first step follows the other side's
                    times[key].append(1e3 * seconds)
    busy1, ours1 = _busy_jiffies(pids)
    # CPU used by *other* processes while we timed, in cores (0 = we had the machine).
    other_cores = ((busy1 - busy0) - (ours1 - ours0)) / os.sysconf("SC_CLK_TCK") / (
        time.perf_counter() - start)
    peaks = {"jax": [], "torch": []}
    for i in range(3):
        for key, worker in (order if i % 2 == 0 else order[::-1]):
            time.sleep(args.gap)
            peaks[key].append(worker.ask(f"peak {args.peak_size}"))
    jax_worker.close()
    torch_worker.close()
    result = dict(setup=name, reps=reps, block=args.block, timed_steps=len(times["jax"]),
                  load_before=load_before, load_after=_loadavg(),
                  other_cores=other_cores,
                  jax_params=jax_worker.info["params"], torch_params=torch_worker.info["params"],
                  flops_per_token=flops_per_token(setup), tokens=setup.batch * setup.context,
                  jax_peak=max(peaks["jax"]), torch_peak=max(peaks["torch"]))
    for key in ("jax", "torch"):
        result[f"{key}_ms"] = statistics.median(times[key])
        result[f"{key}_q"] = _quartiles(times[key])
    result["ratio"] = result["torch_ms"] / result["jax_ms"]
    print(f"[{name}] median step over {len(times['jax'])} steps ({reps} alternating turns): llmos_jax {result['jax_ms']:.2f} ms "
          f"(IQR {result['jax_q'][0]:.2f}-{result['jax_q'][1]:.2f})  torch "
          f"{result['torch_ms']:.2f} ms (IQR {result['torch_q'][0]:.2f}-"
          f"{result['torch_q'][1]:.2f})  ratio torch/jax {result['ratio']:.3f}  "
          f"[other processes used {other_cores:.2f} cores meanwhile; load {load_before} -> "
          f"{result['load_after']}]")
    return result


def _pairs_summary(setup: str, runs: list[dict]) -> dict:
    """The median over worker pairs: each pair's ratio counts once, whatever its spread."""
    ratios = [r["ratio"] for r in runs]
    return {"setup": setup, "pairs": len(runs), "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "median_jax_ms": statistics.median(r["jax_ms"] for r in runs),
            "median_torch_ms": statistics.median(r["torch_ms"] for r in runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=["small", "large", "both"], default="both")
    parser.add_argument("--reps", type=int, default=0,
                        help="alternating turns per framework, each of --block steps "
                        "(default 60 small, 12 large)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block", type=int, default=1,
                        help="steps per turn: 1 alternates single steps (each starts right "
                        "after the other framework's, its threads and caches cold); N > 1 runs "
                        "N back-to-back steps per turn, as a training loop does, and times "
                        "all but the first of each turn")
    parser.add_argument("--gap", type=float, default=0.02,
                        help="seconds of pause before each step, so the other worker's threads "
                        "have gone idle")
    parser.add_argument("--torch_attention", choices=["sdpa", "manual"], default="sdpa")
    parser.add_argument("--torch_adamw", choices=["foreach", "fused", "for-loop"],
                        default="foreach")
    parser.add_argument("--peak_size", type=int, default=1024)
    parser.add_argument("--no_runtime_config", action="store_true",
                        help="JAX worker: skip llmos_jax.runtime.configure_host_runtime() at "
                        "start (jit_train_step still tunes malloc late; see --host_allocator)")
    parser.add_argument("--host_allocator", choices=["tuned", "system"], default="tuned",
                        help="system: JAX worker runs with LLMOS_HOST_ALLOCATOR=system, glibc "
                        "malloc untouched")
    parser.add_argument("--jax_scan_unroll", type=int, default=0,
                        help="layers per layer-scan iteration (0: the framework's choice, the "
                        "whole stack on CPU; 1: a rolled while loop)")
    parser.add_argument("--jax_attention_grad", choices=["custom", "autodiff"], default="custom",
                        help="autodiff: differentiate the attention formula instead of the "
                        "hand-written backward pass")
    parser.add_argument("--jax_dense", choices=["matmul", "einsum"], default="matmul",
                        help="einsum: dense layers as [batch, length, ...] einsums, not the "
                        "2-D matmul `models.dense.project` uses on CPU")
    parser.add_argument("--no_donate", action="store_true",
                        help="JAX worker: jit the step without donating the old state")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout rate in both models (nanoGPT's GPU setup uses 0.2)")
    parser.add_argument("--jax_pythonpath",
                        help="put this folder first on the JAX worker's PYTHONPATH, e.g. an "
                        "exported older tree (`git archive REV | tar -x -C DIR`)")
    parser.add_argument("--reference", choices=["torch", "jax"], default="torch",
                        help="jax: time the (ablated) JAX step against the default JAX step "
                        "instead of PyTorch; the 'torch' columns then mean that reference")
    parser.add_argument("--worker_pairs", type=int, default=1,
                        help="fresh JAX/reference worker pairs per setup, one after another; "
                        "with more than one, also prints the median of their ratios")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.block < 1:
        parser.error(f"--block={args.block}: give 1 or more steps per turn")
    if args.worker_pairs < 1:
        parser.error(f"--worker_pairs={args.worker_pairs}: give 1 or more pairs")
    bad = [r for r in rest if not (r.startswith("--jax.") and "=" in r)]
    if bad:
        parser.error(f"unrecognised arguments {bad}; TransformerConfig overrides look like "
                     "--jax.FIELD=VALUE")
    jax_overrides = {}
    for item in rest:
        key, value = item[len("--jax."):].split("=", 1)
        try:
            jax_overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            jax_overrides[key] = value
    if args.worker:
        return worker_main(args, jax_overrides)

    from llmos_jax.monitoring.flops import mfu
    from llmos_jax.monitoring.host_cpu import describe_cpu

    names = ["small", "large"] if args.setup == "both" else [args.setup]
    cpu = describe_cpu()
    print(f"CPU: {cpu.summary()}")
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; torch attention="
          f"{args.torch_attention}, AdamW={args.torch_adamw}; jax overrides "
          f"{jax_overrides or 'none'}; ablations: runtime config "
          f"{'off' if args.no_runtime_config else 'on'}, allocator {args.host_allocator}, "
          f"scan unroll {args.jax_scan_unroll or 'default'}, attention grad "
          f"{args.jax_attention_grad}, dense {args.jax_dense}, donate {not args.no_donate}, "
          f"dropout {args.dropout}, "
          f"jax code {args.jax_pythonpath or 'this tree'}; reference "
          f"{'the default llmos_jax step (columns labelled torch)' if args.reference == 'jax' else 'torch'}")
    results = [run_setup(name, args, rest) for name in names for _ in range(args.worker_pairs)]
    print()
    print("| setup | params | llmos_jax ms/step | torch ms/step | torch/jax | "
          "llmos_jax MFU | torch MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        # MFU of both against the larger of the two measured peaks (same hardware).
        peak = max(r["jax_peak"], r["torch_peak"])
        r["peak"] = peak
        for key in ("jax", "torch"):
            r[f"{key}_mfu"] = mfu(flops_per_token=r["flops_per_token"],
                                  tokens_per_second=r["tokens"] / (r[f"{key}_ms"] / 1e3),
                                  peak_flops_per_second=peak)
        print(f"| {r['setup']} | {r['jax_params']:,} | {r['jax_ms']:.2f} | {r['torch_ms']:.2f} | "
              f"{r['ratio']:.3f} | {100 * r['jax_mfu']:.1f}% | {100 * r['torch_mfu']:.1f}% |")
    summaries = [_pairs_summary(name, [r for r in results if r["setup"] == name])
                 for name in names if args.worker_pairs > 1]
    for summary in summaries:
        print(f"[{summary['setup']}] {summary['pairs']} worker pairs: torch/jax per pair "
              f"{', '.join(f'{x:.3f}' for x in summary['ratios'])}; median "
              f"{summary['median_ratio']:.3f} (min {min(summary['ratios']):.3f}, max "
              f"{max(summary['ratios']):.3f}); median ms/step llmos_jax "
              f"{summary['median_jax_ms']:.2f}, torch {summary['median_torch_ms']:.2f}")
    print(f"CPU: {cpu.summary()}")
    for r in results:
        print(f"[{r['setup']}] model FLOPs/token {r['flops_per_token'] / 1e6:.2f} M; float32 "
              f"matmul peak ({args.peak_size}^2, best of 3 medians): jax "
              f"{r['jax_peak'] / 1e9:.1f}, torch {r['torch_peak'] / 1e9:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu.as_dict(), "runs": results, "pairs": summaries}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
