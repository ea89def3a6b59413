#!/usr/bin/env python
"""Closed-loop serving load: `llmos serve` vs `transformers serve --continuous-batching` vs
sequential `generate`, on the same GPT-2-small-sized random weights.

For each concurrency C, each server is started fresh on 127.0.0.1 (the order of
servers alternates between concurrencies), warmed up with min(C, 4) concurrent
requests that are not counted, then C streaming clients (the official `openai` client, asyncio)
each send `--requests_per_client` completions one after another: prompts of 128
tokens (distinct per request), exactly 64 output tokens (`ignore_eos` and
`min_tokens` on ours; on the peer the weights' config has no EOS and
`generation_config={"min_new_tokens": 64}`), float32 on both. Sequential
`generate` runs the same requests one at a time in a child process.

Reported per server and C: output tokens/s, requests/s, time to first token and
inter-token latency p50/p99 (per token gap, measured by the client), the CPU
seconds the load clients themselves used (they share the cores), the server's
CPU seconds and peak resident memory. `llmos serve` gets `--max-slots=C`,
`--prefill-chunk=128` and whatever `--llmos_args` adds (e.g. `--prefill-batch=8`).

    python benchmarks/make_hf_gpt2_dir.py /tmp/gpt2_small_random
    python benchmarks/serve_load.py --hf_dir=/tmp/gpt2_small_random --clients=1,8,32,64 \\
        --output=docs/serving_performance.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

import httpx
import openai

from llmos_jax.serving.server import free_port

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hf_gpt2_dir import prompt_of_length  # noqa: E402

OUTPUT_TOKENS = 64


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _tree(pid: int):
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a server and its child processes (the peer generates in one)."""
    total = 0.0
    for process in _tree(pid):
        times = process.cpu_times()
        total += times.user + times.system
    return total


def machine_busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used (to tell what others took meanwhile)."""
    import psutil

    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(
        times, "softirq", 0.0)


def peak_rss_mb(pid: int) -> float:
    """Sum over the server's processes of each one's peak resident memory (VmHWM)."""
    total = 0
    for process in _tree(pid):
        for line in open(f"/proc/{process.pid}/status"):
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


class Server:
    """A server subprocess on 127.0.0.1: started, waited for, measured, stopped."""

    def __init__(self, kind: str, hf_dir: str, clients: int, log_dir: str,
                 llmos_args: tuple[str, ...] = ()):
        self.kind, self.port = kind, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if kind == "llmos":
            command = ["llmos", "serve", f"--model={hf_dir}", f"--port={self.port}",
                       f"--max-slots={clients}", "--max-queue=1024", "--prefill-chunk=128",
                       "--log-level=warning", "--served-model-name=gpt2-random", *llmos_args]
            self.model, self.ready_path = "gpt2-random", "/health/ready"
        else:
            command = ["transformers", "serve", hf_dir, "--continuous-batching",
                       "--host=127.0.0.1", f"--port={self.port}", "--device=cpu",
                       "--dtype=float32", "--log-level=warning"]
            self.model, self.ready_path = hf_dir, "/v1/models"
        self.log = open(os.path.join(log_dir, f"{kind}-{clients}.log"), "w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)

    def wait_ready(self, timeout: float = 900) -> float:
        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.kind} exited with {self.process.returncode}; see "
                                 f"{self.log.name}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.kind} not ready after {timeout} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def one_request(client: openai.AsyncOpenAI, server: Server, prompt: str) -> dict:
    extra = ({"ignore_eos": True, "min_tokens": OUTPUT_TOKENS} if server.kind == "llmos"
             else {"generation_config": json.dumps({"min_new_tokens": OUTPUT_TOKENS})})
    started = time.monotonic()
    arrivals, tokens = [], 0
    stream = await client.completions.create(
        model=server.model, prompt=prompt, max_tokens=OUTPUT_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body=extra)
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.monotonic())
    tokens = usage if usage is not None else len(arrivals)
    return {"ttft": arrivals[0] - started if arrivals else None,
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "e2e": time.monotonic() - started, "tokens": tokens}


async def closed_loop(server: Server, clients: int, per_client: int, seed: int) -> dict:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                                timeout=3600, http_client=None)
    results: list[dict] = []

    async def user(i: int):
        for j in range(per_client):
            prompt = prompt_of_length(128, seed * 100_000 + i * 1000 + j)
            results.append(await one_request(client, server, prompt))

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu0 = proc_cpu_seconds(server.process.pid)
    machine_cpu0 = machine_busy_cpu_seconds()
    started = time.monotonic()
    await asyncio.gather(*(user(i) for i in range(clients)))
    wall = time.monotonic() - started
    await client.close()  # inside the loop: closing after asyncio.run ends prints tracebacks
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    machine_cpu = machine_busy_cpu_seconds() - machine_cpu0
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    server_cpu = proc_cpu_seconds(server.process.pid) - server_cpu0
    tokens = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    return {"requests": len(results), "wall_s": wall, "output_tokens": tokens,
            "output_tokens_per_s": tokens / wall, "requests_per_s": len(results) / wall,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
            "itl_p50_s": percentile(gaps, 50), "itl_p99_s": percentile(gaps, 99),
            "tokens_per_request": sorted({r["tokens"] for r in results}),
            "client_cpu_s": client_cpu, "server_cpu_s": server_cpu,
            "other_processes_cpu_s": max(0.0, machine_cpu - client_cpu - server_cpu),
            "server_peak_rss_mb": peak_rss_mb(server.process.pid)}


def run_server(kind: str, args, clients: int) -> dict:
    server = Server(kind, args.hf_dir, clients, args.log_dir, tuple(args.llmos_args.split()))
    try:
        ready = server.wait_ready()
        asyncio.run(closed_loop(server, min(clients, 4), 1, seed=999))  # warm-up, not counted
        result = asyncio.run(closed_loop(server, clients, args.requests_per_client, seed=clients))
        result["startup_to_ready_s"] = ready
        return result
    finally:
        server.stop()


SEQUENTIAL_CHILD = r"""
import json, sys, time, resource
import torch, transformers
sys.path.insert(0, sys.argv[3])
from make_hf_gpt2_dir import prompt_of_length
torch.manual_seed(0)
tok = transformers.PreTrainedTokenizerFast(tokenizer_file=sys.argv[1] + "/tokenizer.json")
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
n = int(sys.argv[2])
def gen(prompt, new):
    ids = torch.tensor([tok.encode(prompt)])
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              attention_mask=torch.ones_like(ids), pad_token_id=0)
gen(prompt_of_length(128, 1), 4)
ttfts, e2es, tokens = [], [], 0
started = time.monotonic()
for i in range(n):
    p = prompt_of_length(128, 5000 + i)
    t0 = time.monotonic(); gen(p, 1); ttfts.append(time.monotonic() - t0)
    t0 = time.monotonic(); out = gen(p, 64); e2es.append(time.monotonic() - t0)
    tokens += out.shape[1] - 128
wall = sum(e2es)
print(json.dumps({"requests": n, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
                  "requests_per_s": n / wall, "ttft_p50_s": sorted(ttfts)[n // 2],
                  "e2e_p50_s": sorted(e2es)[n // 2],
                  "itl_p50_s": (sorted(e2es)[n // 2] - sorted(ttfts)[n // 2]) / 63,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_sequential(args) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SEQUENTIAL_CHILD, args.hf_dir,
                          str(args.sequential_requests), here],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    import platform

    from llmos_jax.monitoring.host_cpu import describe_cpu
    from llmos_jax.monitoring.peak_flops import measure_matmul_peak

    cpu = describe_cpu()
    return {"cpu": cpu.model, "cores": cpu.cpus, "python": platform.python_version(),
            "cpu_flags": list(cpu.flags),
            "fp32_matmul_peak_gflops": measure_matmul_peak() / 1e9}


def median_runs(runs: list[dict]) -> dict:
    """Per (server, clients): the median throughput and p99 TTFT over repeated loads.

    Repeats come from naming a concurrency more than once (``--clients=32,32,32``); the
    order of the servers alternates at each, so neither always goes first.
    """
    grouped: dict = {}
    for run in runs:
        grouped.setdefault((run["server"], run["clients"]), []).append(run)
    return {key: {"repeats": len(group),
                  "output_tokens_per_s": statistics.median(
                      r["output_tokens_per_s"] for r in group),
                  "ttft_p99_s": statistics.median(r["ttft_p99_s"] for r in group)}
            for key, group in grouped.items()}


def markdown_table(report: dict) -> str:
    """The runs as a Markdown table, with llmos/transformers ratios at each concurrency."""
    def ms(value):
        return "-" if value is None else f"{value * 1000:.0f}"

    rows = ["| server | clients | output tok/s | req/s | TTFT p50 / p99 (ms) | "
            "ITL p50 / p99 (ms) | server CPU s | client CPU s | other CPU s | "
            "server peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        rows.append(
            f"| {run['server']} | {run['clients']} | {run['output_tokens_per_s']:.1f} | "
            f"{run['requests_per_s']:.2f} | {ms(run['ttft_p50_s'])} / {ms(run['ttft_p99_s'])} | "
            f"{ms(run['itl_p50_s'])} / {ms(run['itl_p99_s'])} | {run['server_cpu_s']:.0f} | "
            f"{run['client_cpu_s']:.0f} | {run.get('other_processes_cpu_s', 0):.0f} | "
            f"{run['server_peak_rss_mb']:.0f} |")
    sequential = report.get("sequential_generate")
    if sequential:
        rows.append(f"| sequential `generate` | 1 | {sequential['output_tokens_per_s']:.1f} | "
                    f"{sequential['requests_per_s']:.2f} | {ms(sequential['ttft_p50_s'])} / - | "
                    f"{ms(sequential['itl_p50_s'])} / - | - | - | - | "
                    f"{sequential['peak_rss_mb']:.0f} |")
    by_key = median_runs(report["runs"])
    ratios = ["", "| clients | runs per server | tok/s llmos / transformers (medians) | "
              "TTFT p99 llmos / transformers (medians) | tok/s llmos / sequential generate |",
              "|---|---|---|---|---|"]
    for (server, clients), run in sorted(by_key.items(), key=lambda item: item[0][1]):
        peer = by_key.get(("transformers", clients))
        if server != "llmos":
            continue
        vs_peer = (f"{run['output_tokens_per_s'] / peer['output_tokens_per_s']:.2f}x"
                   if peer else "-")
        ttft = (f"{run['ttft_p99_s'] / peer['ttft_p99_s']:.2f}x"
                if peer and peer["ttft_p99_s"] else "-")
        vs_sequential = (f"{run['output_tokens_per_s'] / sequential['output_tokens_per_s']:.2f}x"
                         if sequential else "-")
        ratios.append(f"| {clients} | {run['repeats']} | {vs_peer} | {ttft} | {vs_sequential} |")
    return "\n".join(rows + ratios) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf_dir", required=True)
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--servers", default="llmos,transformers")
    parser.add_argument("--requests_per_client", type=int, default=2)
    parser.add_argument("--sequential_requests", type=int, default=4)
    parser.add_argument("--log_dir", default="/tmp/serve_load_logs")
    parser.add_argument("--llmos_args", default="", help="extra `llmos serve` flags, e.g. "
                        "'--prefill-batch=8'")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    os.makedirs(args.log_dir, exist_ok=True)
    report = {"machine": machine(), "command": " ".join(sys.argv), "runs": [],
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    servers = args.servers.split(",")
    for n, clients in enumerate(int(c) for c in args.clients.split(",")):
        order = servers if n % 2 == 0 else servers[::-1]  # alternate who goes first
        for kind in order:
            print(f"[serve_load] {kind} with {clients} clients", flush=True)
            result = run_server(kind, args, clients)
            report["runs"].append({"server": kind, "clients": clients, **result})
            print(json.dumps(report["runs"][-1]), flush=True)
            with open(args.output, "w") as f:
                json.dump(report, f, indent=1)
    if args.sequential_requests:
        print("[serve_load] sequential generate", flush=True)
        report["sequential_generate"] = run_sequential(args)
        print(json.dumps(report["sequential_generate"]), flush=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(markdown_table(report))


if __name__ == "__main__":
    main()
