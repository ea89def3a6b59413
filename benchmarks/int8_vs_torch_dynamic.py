"""Our int8 weights vs float32, side by side with PyTorch dynamic int8, on the same GPT-2 weights.

One Hugging Face GPT-2 folder (`benchmarks/make_hf_gpt2_dir.py`: GPT-2-small shape,
random weights) is loaded by both sides:

- ours: `convert` imports it, `compression.int8.quantize_int8` quantizes it (what
  `llmos serve --quantize=int8` does), and the serving decode step (`SlotPrograms`)
  is timed;
- PyTorch: `transformers.GPT2LMHeadModel`, then
  `torch.ao.quantization.quantize_dynamic(..., {nn.Linear}, qint8)`. GPT-2 keeps its
  projections in `Conv1D` modules, which `quantize_dynamic` skips, so they are
  swapped for equal `nn.Linear`s first (else only `lm_head` would be quantized).

Each mode runs in its own process, so its peak resident memory (`ru_maxrss`) is its
own. Printed per mode (one JSON line): parameter bytes held, peak RSS, logits error
against the float model of the same side on a fixed batch (2 x 32 tokens), and decode
tokens/s at batch 1 and 16 (8 steps after one warm-up; the cache holds 64 positions
of prompt for torch; ours reads a 128-position span).

    PYTHONPATH=. python benchmarks/int8_vs_torch_dynamic.py /tmp/gpt2_small_random [MODE]

MODE runs one of them only; TORCH_THREADS=N sets PyTorch's intra-op threads. Ours
tunes the host allocator as `llmos serve` does (`llmos_jax.runtime`);
LLMOS_HOST_ALLOCATOR=system leaves malloc alone (each step's large temporaries then
page-fault back in, as in the first recorded runs).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

MODES = ("ours-float32", "ours-int8", "torch-float32", "torch-dynamic-int8")
BATCHES, STEPS, PROMPT = (1, 16), 8, 64
TOKENS = np.random.default_rng(0).integers(0, 50000, size=(2, 32))


def ours(folder: str, quantized: bool) -> dict:
    from llmos_jax import runtime

    runtime.configure_host_runtime()  # as `llmos serve` does, before JAX allocates
    import jax
    from flax import nnx

    from llmos_jax.compression.int8 import parameter_bytes
    from llmos_jax.convert.hf_models import CONVERTERS
    from llmos_jax.serving.model_source import quantized_for_serving
    from llmos_jax.serving.slot_programs import SlotPrograms
    from llmos_jax.serving.slot_sampling import settings_rows

    model = CONVERTERS["gpt2"].import_model(folder)
    reference = np.asarray(model(TOKENS))
    if quantized:  # as `llmos serve --quantize=int8`: layers unstacked, then quantized
        model = quantized_for_serving(model, "int8")
    logits = np.asarray(model(TOKENS))
    result = {"param_bytes": parameter_bytes(nnx.state(model, nnx.Param)),
              **_error(logits, reference)}
    for batch in BATCHES:
        programs = SlotPrograms(model, slots=batch, context=128, prefill_chunk=16)
        state = programs.initial_state()
        settings = settings_rows([None] * batch)
        active, adapters = np.ones((batch,), bool), np.zeros((batch,), np.int32)
        state, choice = programs.decode_step(state, settings, active, adapters, 128)
        jax.block_until_ready(choice.tokens)
        start = time.perf_counter()
        for _ in range(STEPS):
            state, choice = programs.decode_step(state, settings, active, adapters, 128)
        jax.block_until_ready(choice.tokens)
        result[f"decode_tok_s_batch{batch}"] = batch * STEPS / (time.perf_counter() - start)
    return result


def torch_side(folder: str, quantized: bool) -> dict:
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    if os.environ.get("TORCH_THREADS"):  # e.g. 1 on a machine shared with other jobs
        torch.set_num_threads(int(os.environ["TORCH_THREADS"]))
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    tokens = torch.tensor(TOKENS)
    with torch.no_grad():
        reference = model(tokens).logits.numpy()
    if quantized:
        _conv1d_to_linear(model, Conv1D)
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                       dtype=torch.qint8)
    with torch.no_grad():
        logits = model(tokens).logits.numpy()
    result = {"param_bytes": _torch_bytes(model), **_error(logits, reference)}
    for batch in BATCHES:
        prompt = torch.randint(0, 50000, (batch, PROMPT))
        with torch.no_grad():
            out = model(prompt, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            out = model(token, past_key_values=past, use_cache=True)  # warm-up step
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(STEPS):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            seconds = time.perf_counter() - start
        result[f"decode_tok_s_batch{batch}"] = batch * STEPS / seconds
    return result


def _conv1d_to_linear(module, conv1d_type) -> None:
    import torch

    for name, child in module.named_children():
        if isinstance(child, conv1d_type):
            fan_in, fan_out = child.weight.shape
            linear = torch.nn.Linear(fan_in, fan_out)
            linear.weight.data = child.weight.data.t().contiguous()
            linear.bias.data = child.bias.data
            setattr(module, name, linear)
        else:
            _conv1d_to_linear(child, conv1d_type)


def _torch_bytes(model) -> int:
    import torch

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():  # packed int8 weights are not parameters
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight = module.weight()
            total += weight.numel() * weight.element_size()
            bias = module.bias()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


def _error(logits: np.ndarray, reference: np.ndarray) -> dict:
    diff = logits.astype(np.float64) - reference
    return {"logits_max_abs_err": float(np.abs(diff).max()),
            "logits_rel_rms_err": float(np.sqrt((diff ** 2).mean() / (reference ** 2).mean())),
            "argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean())}


def run_mode(mode: str, folder: str) -> dict:
    side, kind = mode.split("-", 1)
    quantized = kind != "float32"
    result = (ours if side == "ours" else torch_side)(folder, quantized)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, **result}


if __name__ == "__main__":
    folder = sys.argv[1]
    if len(sys.argv) > 2:  # one mode, in this process
        print(json.dumps(run_mode(sys.argv[2], folder)), flush=True)
        sys.exit(0)
    print(json.dumps({"load_average_before": os.getloadavg()}), flush=True)
    for mode in MODES:
        subprocess.run([sys.executable, __file__, folder, mode], check=True)
    print(json.dumps({"load_average_after": os.getloadavg()}), flush=True)
