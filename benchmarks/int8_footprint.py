"""int8 vs float32 footprint of a GPT-2-small-sized decoder (random weights).

Prints parameter bytes (whole model, and the embedding's share) and the
compiled serving decode step's argument and temporary bytes, from XLA's
memory analysis of the program `llmos serve` runs (nothing is executed),
then, unless --no-decode, greedy decode tokens/s at batch 1 for both.

    PYTHONPATH=. python benchmarks/int8_footprint.py [--no-decode]
"""

import sys
import time

from llmos_jax import runtime

runtime.configure_host_runtime()  # as `llmos serve` does, before JAX allocates
import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.compression.int8 import parameter_bytes, quantize_int8
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.serving.slot_programs import SlotPrograms
from llmos_jax.serving.slot_sampling import settings_rows

CONFIG = TransformerConfig(vocab_size=50257, num_layers=12, embed_dim=768, num_heads=12,
                           mlp_dim=3072, max_len=1024, scan_layers=False, dropout_rate=0.0)
CONTEXT, STEPS = 128, 32


def measure(quantized: bool) -> dict:
    model = DecoderLM(CONFIG, rngs=nnx.Rngs(0))
    if quantized:
        quantize_int8(model)
    params = nnx.state(model, nnx.Param)
    embed = parameter_bytes(nnx.state(model.token_embed, nnx.Param))
    programs = SlotPrograms(model, slots=1, context=CONTEXT, prefill_chunk=16)
    args = (programs.params, programs.initial_state(), settings_rows([None]),
            np.ones((1,), bool), np.zeros((1,), np.int32))
    compiled = programs._step_fn.lower(*args, read_len=CONTEXT).compile()
    memory = compiled.memory_analysis()
    result = {"param_bytes": parameter_bytes(params), "embedding_bytes": embed,
              "step_argument_bytes": memory.argument_size_in_bytes,
              "step_temp_bytes": memory.temp_size_in_bytes}
    if "--no-decode" not in sys.argv:
        state = programs.initial_state()
        active, adapters, settings = np.ones((1,), bool), np.zeros((1,), np.int32), args[2]
        state, choice = programs.decode_step(state, settings, active, adapters, CONTEXT)
        jax.block_until_ready(choice.tokens)
        start = time.perf_counter()
        for _ in range(STEPS):
            state, choice = programs.decode_step(state, settings, active, adapters, CONTEXT)
        jax.block_until_ready(choice.tokens)
        result["decode_tokens_per_s_batch1"] = STEPS / (time.perf_counter() - start)
    return result


if __name__ == "__main__":
    import os
    print("load average before:", os.getloadavg())
    for quantized in ((True,) if "--int8-only" in sys.argv else (False, True)):
        print("int8" if quantized else "float32", measure(quantized), flush=True)
    print("load average after:", os.getloadavg())
