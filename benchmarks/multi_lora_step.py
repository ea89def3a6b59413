"""What serving several LoRA adapters in one batch costs per decode step.

The serving decode step (`SlotPrograms`) of one decoder, timed as the base alone and
with N adapters attached (`compression.multi_lora`, rank 8 on every attention and MLP
projection), the slots spread over the adapters and the base. The two are timed in
turns in one process (best of 5 rounds of 16 steps each), so a busy machine slows
both alike.

    PYTHONPATH=. python benchmarks/multi_lora_step.py [--layers=4 --width=128 --slots=16]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from flax import nnx

from llmos_jax.compression.lora import LoraConfig, apply_lora
from llmos_jax.compression.multi_lora import AdapterWeights, attach_adapters
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.serving.slot_programs import SlotPrograms
from llmos_jax.serving.slot_sampling import settings_rows

ROUNDS, STEPS, CONTEXT = 5, 16, 128


def adapters(config: TransformerConfig, count: int) -> dict[str, AdapterWeights]:
    out = {}
    for index in range(count):
        model = DecoderLM(config, rngs=nnx.Rngs(index + 1))
        lora = LoraConfig(rank=8, seed=index)
        apply_lora(model, lora)
        tensors = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf) + 0.01
                   for path, leaf in jax.tree_util.tree_flatten_with_path(
                       nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]
                   if str(getattr(path[-1], "key", "")) in ("lora_a", "lora_b")}
        out[f"a{index}"] = AdapterWeights(lora, tensors, "random")
    return out


def stepper(model, slots: int, ids: np.ndarray):
    programs = SlotPrograms(model, slots=slots, context=CONTEXT, prefill_chunk=16)
    state = [programs.initial_state()]
    settings, active = settings_rows([None] * slots), np.ones((slots,), bool)

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            state[0], choice = programs.decode_step(state[0], settings, active, ids, CONTEXT)
        jax.block_until_ready(choice.tokens)
        return time.perf_counter() - start
    run(1)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=2)
    args = parser.parse_args()
    config = TransformerConfig(vocab_size=65, num_layers=args.layers, embed_dim=args.width,
                               num_heads=4, max_len=CONTEXT, scan_layers=False)
    base = DecoderLM(config, rngs=nnx.Rngs(0))
    with_adapters = DecoderLM(config, rngs=nnx.Rngs(0))
    attach_adapters(with_adapters, adapters(config, args.adapters))
    ids = (np.arange(args.slots) % (args.adapters + 1)).astype(np.int32)
    print("load average before:", os.getloadavg())
    runs = {"base": stepper(base, args.slots, np.zeros_like(ids)),
            f"{args.adapters} adapters": stepper(with_adapters, args.slots, ids)}
    best = {name: float("inf") for name in runs}
    for _ in range(ROUNDS):  # in turns, so load changes hit both
        for name, run in runs.items():
            best[name] = min(best[name], run(STEPS) / STEPS)
    for name, seconds in best.items():
        print(f"{name}: {seconds * 1e3:.2f} ms per decode step, batch {args.slots}")
    print(f"overhead: {best[f'{args.adapters} adapters'] / best['base'] - 1:+.1%}")
    print("load average after:", os.getloadavg())


if __name__ == "__main__":
    main()
