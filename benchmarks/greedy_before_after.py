#!/usr/bin/env python
"""Greedy decoding time per call of the tree on PYTHONPATH, for before/after comparisons.

Works with trees before `DecodingEngine` (module-level `generate` cache) and after.
Needs a GPT-2-small directory made by `benchmarks/decode_speed.build_hf_model(DIR)`.
ABL_JIT=1 swaps the engine's ahead-of-time compiled programs for plain `jax.jit`.

    GPT2_DIR=DIR PYTHONPATH=TREE python benchmarks/greedy_before_after.py   # alternate the trees
"""
import os
import statistics
import time

import numpy as np
from llmos_jax.convert.hf_models import import_hf_model
from llmos_jax.inference import DecodeConfig
model = import_hf_model(os.environ.get('GPT2_DIR', '/tmp/gpt2dir'), dropout_rate=0.0)
try:
    from llmos_jax.inference import DecodingEngine
    if os.environ.get("ABL_JIT"):
        import jax
        from llmos_jax.inference import decode_programs as dp
        def _call(self, key, params_key, build, params, *arrays):
            full_key = (key, params_key, dp.arguments_key(arrays))
            program = self._programs.get(full_key)
            if program is None:
                program = jax.jit(build()); self._programs[full_key] = program; self.compilations += 1
            return program(params, *arrays)
        dp.ModelPrograms._call = _call
    engine = DecodingEngine(model)
    run = lambda p, c: engine.generate(p, c)
    tag = "after" + ("+jit" if os.environ.get("ABL_JIT") else "")
except ImportError:
    from llmos_jax.inference import generate
    run = lambda p, c: generate(model, None, p, c)
    tag = "before"
rng = np.random.default_rng(0)
out = {}
for batch in (1, 16):
    prompts = rng.integers(0, 50257, size=(batch, 128)).tolist()
    cfg = DecodeConfig(max_new_tokens=32)
    run(prompts, cfg)
    times = []
    for _ in range(7 if batch == 1 else 3):
        t = time.perf_counter(); run(prompts, cfg); times.append(time.perf_counter() - t)
    out[batch] = statistics.median(times)
print(tag, " ".join(f"b{b}={v:.3f}s" for b, v in out.items()), flush=True)
