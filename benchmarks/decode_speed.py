#!/usr/bin/env python
"""Decoding speed: llmos_jax `DecodingEngine` against transformers + PyTorch `generate`, one run.

Both decode a GPT-2-small-sized model (12 layers, width 768, 50257-token
vocabulary) with the same random weights: a `GPT2LMHeadModel` is randomly
initialised, saved, and imported with `llmos_jax.convert`. Prompts are 128
random tokens; no EOS, so every run generates exactly `--new_tokens` tokens.
Measured, as medians over `--reps` runs:

- greedy tokens/s at batch 1 and batch 16 (generated tokens / wall time of
  the whole `generate` call, prefill included);
- time to first token (a `generate` call with `max_new_tokens=1`) at batch 1;
- beam search with 4 beams at batch 1 (tokens/s of the returned best sequence).

Each framework runs in its own worker process (in one process their thread
pools spin against each other), JAX first, then PyTorch. Both use the GPU
when there is one (JAX's default backend; PyTorch's ``cuda``), in float32. Timings exclude a
warm-up call per case (JAX's compilation; one engine keeps the compiled programs). The
ratio column is torch_time / jax_time: >= 1 means llmos_jax is faster.

    python benchmarks/decode_speed.py            # full: 128 + 128 tokens, 3 reps
    python benchmarks/decode_speed.py --quick    # 1 rep, 32 new tokens

Needs PyTorch and transformers: `pip install -e '.[reference]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def build_hf_model(directory: str) -> None:
    import torch
    import transformers

    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                     n_positions=1024, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(directory)


def cases(new: int) -> dict:
    """name: (batch, our DecodeConfig fields, torch generate kwargs, tokens counted)."""
    return {
        "greedy batch 1": (1, {"max_new_tokens": new}, {"max_new_tokens": new}, new),
        "greedy batch 16": (16, {"max_new_tokens": new}, {"max_new_tokens": new}, 16 * new),
        "first token, batch 1": (1, {"max_new_tokens": 1}, {"max_new_tokens": 1}, 1),
        "beam 4, batch 1": (1, {"method": "beam", "num_beams": 4, "max_new_tokens": new},
                            {"max_new_tokens": new, "num_beams": 4}, new),
    }


def jax_runner(directory: str):
    from llmos_jax.convert.hf_models import import_hf_model
    from llmos_jax.inference import DecodeConfig, DecodingEngine

    engine = DecodingEngine(import_hf_model(directory, dropout_rate=0.0))

    def run(prompts, fields, _):
        results = engine.generate(prompts, DecodeConfig(**fields))
        assert all(r.ok for r in results)

    return run


def torch_runner(directory: str):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval().to(device)

    def run(prompts, _, kwargs):
        ids = torch.tensor(prompts, device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=False, pad_token_id=0, eos_token_id=None, **kwargs)
        out.cpu()  # Waits for the GPU, as our generate returns host results.

    return run


def _device_name(framework: str) -> str:
    if framework == "jax":
        import jax

        return jax.devices()[0].device_kind
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def worker(framework: str, directory: str, args) -> None:
    """Times every case in this process; prints one JSON line of medians (seconds)."""
    run = (jax_runner if framework == "jax" else torch_runner)(directory)
    rng = np.random.default_rng(0)
    medians: dict = {"device": _device_name(framework)}
    for name, (batch, fields, kwargs, _) in cases(args.new_tokens).items():
        prompts = rng.integers(0, 50257, size=(batch, args.prompt_len)).tolist()
        run(prompts, fields, kwargs)  # compile / warm up
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            run(prompts, fields, kwargs)
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times)
        print(f"  {framework} {name}: {medians[name]:.3f}s", file=sys.stderr, flush=True)
    print(json.dumps(medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 rep, 32 new tokens")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.new_tokens = 1, 32
    if args.worker:
        worker(args.worker, args.model_dir, args)
        return
    with tempfile.TemporaryDirectory() as directory:
        build_hf_model(directory)
        medians = {}
        for framework in ("jax", "torch"):  # one process each: the runtimes' threads clash
            command = [sys.executable, os.path.abspath(__file__), f"--worker={framework}",
                       f"--model_dir={directory}", f"--prompt_len={args.prompt_len}",
                       f"--new_tokens={args.new_tokens}", f"--reps={args.reps}"]
            output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            medians[framework] = json.loads(output.strip().splitlines()[-1])
    print(f"\nGPT-2 small (random weights), prompt {args.prompt_len}, {args.new_tokens} new "
          f"tokens, median of {args.reps}; load average {os.getloadavg()[0]:.1f}; "
          f"devices: jax {medians['jax'].pop('device')}, torch {medians['torch'].pop('device')}")
    print(f"{'case':<22}{'llmos_jax':>14}{'torch':>14}{'ratio':>8}")
    for name, (_, _, _, tokens) in cases(args.new_tokens).items():
        jax_s, torch_s = medians["jax"][name], medians["torch"][name]
        if tokens == 1:
            jax_cell, torch_cell = f"{jax_s * 1e3:.0f} ms", f"{torch_s * 1e3:.0f} ms"
        else:
            jax_cell, torch_cell = f"{tokens / jax_s:.1f} tok/s", f"{tokens / torch_s:.1f} tok/s"
        print(f"{name:<22}{jax_cell:>14}{torch_cell:>14}{torch_s / jax_s:>7.2f}x")


if __name__ == "__main__":
    main()
