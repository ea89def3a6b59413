"""Peak host memory of loading a ~1B-parameter random Llama, streamed vs in memory.

    python experiments/llama_streaming_load/measure.py build /tmp/llama_1b
    python experiments/llama_streaming_load/measure.py load /tmp/llama_1b --mode stream
    python experiments/llama_streaming_load/measure.py load /tmp/llama_1b --mode in_memory

`build` saves a randomly initialised LlamaForCausalLM (float32, sharded in 1 GB
files, nothing downloaded). `load` imports it in a fresh process and prints one
JSON line: the resident set before loading (Python, JAX and the abstract model),
the peak resident set (``ru_maxrss``), the model's float32 size and the load time.
On CPU the loaded model itself lives in host memory, so the peak is at least
baseline + model; what streaming removes is everything above that.
"""

import argparse
import json
import os
import resource
import sys
import time

CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
              tie_word_embeddings=False)


def current_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def build(directory: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    with torch.no_grad():
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    model.save_pretrained(directory, max_shard_size="1GB")
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()),
                      "files": sorted(os.listdir(directory))}))


def load(directory: str, mode: str, scan_layers: bool, fsdp: int) -> None:
    if fsdp > 1:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={fsdp}"
    import jax
    import numpy as np

    from llmos_jax.convert import llama
    from llmos_jax.convert.model_params import param_specs
    from llmos_jax.partitioning import Layout, MeshConfig

    jax.numpy.zeros(1).block_until_ready()  # start the runtime before the baseline
    config = llama.config_from_hf(json.load(open(os.path.join(directory, "config.json"))),
                                  scan_layers=scan_layers)
    specs = param_specs(llama._abstract_decoder(config))
    model_bytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
                      for shape, dtype in specs.values())
    baseline = current_rss_bytes()
    start = time.perf_counter()
    if mode == "stream":
        layout = Layout.build(MeshConfig(fsdp=fsdp)) if fsdp > 1 else None
        model = llama.import_llama(directory, scan_layers=scan_layers, layout=layout)
    else:
        model = llama.import_llama_in_memory(directory, scan_layers=scan_layers)
    jax.block_until_ready(jax.tree.leaves(model))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gib = 2 ** 30
    print(json.dumps({
        "mode": mode, "scan_layers": scan_layers, "devices": fsdp,
        "parameters": sum(int(np.prod(s)) for s, _ in specs.values()),
        "model_float32_gib": round(model_bytes / gib, 3),
        "baseline_rss_gib": round(baseline / gib, 3), "peak_rss_gib": round(peak / gib, 3),
        "peak_above_baseline_over_model": round((peak - baseline) / model_bytes, 3),
        "load_seconds": round(seconds, 1)}))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "load"])
    parser.add_argument("directory")
    parser.add_argument("--mode", choices=["stream", "in_memory"], default="stream")
    parser.add_argument("--no-scan-layers", dest="scan_layers", action="store_false")
    parser.add_argument("--fsdp", type=int, default=1, help="simulated CPU devices (stream only)")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.directory)
    else:
        load(args.directory, args.mode, args.scan_layers, args.fsdp)


if __name__ == "__main__":
    main(sys.argv[1:])
