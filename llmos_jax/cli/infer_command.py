"""`llmos infer`: decode every prompt of a JSONL file, or every example of a task split.

The model is built from the run's gin file and restored from `--checkpoint`
(`llmos_jax.cli.run_loading`); decoding is set by `DecodeConfig` in
gin (`--gin.DecodeConfig.method="'sample'"`, `--gin.DecodeConfig.top_k=40`,
...). The work is done in chunks that are saved as they finish, so rerunning
an interrupted command resumes it; on several hosts each host decodes its own
chunks and the chief merges them (`llmos_jax.inference.batch_inference`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.cli.model_uris import run_source
from llmos_jax.cli.shared_flags import required, run_flags
from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.infer")

INFER_EXAMPLE = ("llmos infer --gin_file=runs/shakespeare/config.gin --checkpoint=runs/shakespeare "
                 "--input=prompts.jsonl --output=samples.jsonl "
                 "--gin.DecodeConfig.method=\"'sample'\" --gin.DecodeConfig.top_k=40")


def infer_command() -> Command:
    """Builds the `llmos infer` command."""
    flags = (
        *run_flags("--gin.DecodeConfig.top_p=0.9"),
        Flag("input", "FILE", "JSONL requests, one object a line: {\"prompt\": \"...\"} (or "
             "\"inputs\" for encoder-decoders), optional \"id\" and \"seed\"."),
        Flag("task", "NAME", "Decode a seqio Task's (or Mixture's) examples instead of --input."),
        Flag("split", "NAME", "The --task split (default validation)."),
        Flag("prompt_feature", "NAME", "The --task feature used as the prompt (default inputs, "
             "else targets)."),
        Flag("max_examples", "N", "Decode only the first N examples of the --task split."),
        Flag("output", "FILE", "The JSONL results, one line per request in input order; "
             "finished chunks are kept in FILE.parts/ until all are done."),
        Flag("chunk_size", "N", "Requests per saved chunk, the unit a rerun skips (default 64)."),
        Flag("batch_size", "N", "Requests decoded together (default: the chunk size)."),
        Flag("quantize", "int8", "Quantize the restored weights as `llmos serve --quantize=int8` "
             "does (int8 per output channel, dense layers and token embeddings)."),
        Flag("strict", "BOOL", "true: stop at the first malformed JSONL line; false (default): "
             "write an error record for it and go on."),
        Flag("stop_after_chunks", "N", "Decode at most N chunks, then stop (rerun to continue)."),
    )
    return Command(
        name="infer",
        summary="Decode a JSONL file of prompts, or a task split, with a checkpoint.",
        description="Generate completions for every prompt of a JSONL file, or every example of "
        "a seqio task split, with a trained checkpoint. Decoding is set by DecodeConfig in gin. "
        "Chunks are saved as they finish, so an interrupted run resumes where it stopped; on "
        "several hosts each decodes its share.",
        usage="llmos infer --gin_file=PATH --checkpoint=DIR (--input=FILE | --task=NAME "
        "[--split=NAME]) --output=FILE [--gin.DecodeConfig.NAME=VALUE ...]",
        flags=flags,
        example=INFER_EXAMPLE,
        run=run_infer,
    )


def _barrier(process_count: int):
    if process_count == 1:
        return None
    from jax.experimental import multihost_utils

    return lambda: multihost_utils.sync_global_devices("llmos_infer_chunks_done")


def run_infer(flags: ParsedFlags) -> int:
    """Loads the model, reads the requests, decodes this host's chunks, merges on the chief."""
    started = time.perf_counter()
    checkpoint, gin_files, _ = run_source(flags, command="infer", example=INFER_EXAMPLE)
    output = required(flags, "output", command="infer", example=INFER_EXAMPLE,
                      what="the JSONL file to write")
    input_path, task = flags.one("input"), flags.one("task")
    if bool(input_path) == bool(task):
        raise UserError("llmos infer needs exactly one of --input (a JSONL file of prompts) and "
                        "--task (a seqio task split to decode).")
    for name in ("split", "prompt_feature", "max_examples"):
        if flags.one(name) is not None and not task:
            raise UserError(f"--{name} applies to --task only; with --input every line is decoded.")
    chunk_size = flags.positive_int("chunk_size", 64)
    batch_size = flags.positive_int("batch_size", chunk_size)
    strict = flags.boolean("strict")

    from llmos_jax import runtime

    runtime.configure_host_runtime()  # before JAX allocates: see llmos_jax/runtime.py
    from llmos_jax.inference import batch_inference

    source = batch_inference.read_jsonl(input_path, strict=strict) if input_path else None

    import jax

    from llmos_jax.evaluation.objective_predictors import feature_lengths
    from llmos_jax.cli.run_loading import decode_config_from_gin, load_for_inference

    bindings, sources = flags.gin_bindings()
    split = (flags.one("split") or "validation") if task else None
    loaded = load_for_inference(gin_files, bindings, checkpoint=checkpoint, task_name=task,
                                split=split, search_paths=flags.all("gin_search_path"),
                                binding_sources=sources, quantize=flags.one("quantize"))
    vocabularies = loaded.vocabularies
    config = decode_config_from_gin(vocabularies.outputs)
    if task:
        source = batch_inference.read_task(
            loaded.provider, split, vocabulary=vocabularies.inputs,
            feature=flags.one("prompt_feature"),
            sequence_length=feature_lengths(loaded.settings["sequence_length"],
                                            loaded.first_task),
            max_examples=flags.positive_int("max_examples", None))
    add_eos = loaded.encoder_decoder and vocabularies.inputs_add_eos
    eos = vocabularies.inputs.eos_id

    def encode(text: str) -> list[int]:
        tokens = [int(t) for t in vocabularies.inputs.encode(text)]
        return tokens + [eos] if add_eos and tokens else tokens

    manifest: dict[str, Any] = {"checkpoint": str(loaded.location.path),
                                "quantize": flags.one("quantize"),
                                "step": loaded.location.step,
                                "decode_config": json.loads(json.dumps(
                                    dataclasses.asdict(config)))}
    decode = batch_inference.generate_fn(loaded.model, loaded.params, config,
                                         vocabulary=vocabularies.outputs, batch_size=batch_size)
    load_seconds = time.perf_counter() - started
    summary = batch_inference.run_batch_inference(
        source, decode, output, encode=encode, base_seed=config.seed, chunk_size=chunk_size,
        manifest=manifest, process_index=jax.process_index(),
        process_count=jax.process_count(), barrier=_barrier(jax.process_count()),
        stop_after_chunks=flags.positive_int("stop_after_chunks", None))
    malformed = [r.extra.get("line") for r in source.malformed]
    if malformed:
        shown = ", ".join(str(line) for line in malformed[:20]) + (
            "..." if len(malformed) > 20 else "")
        print(f"skipped {len(malformed)} malformed line(s) of {input_path} (lines {shown}); "
              "each has an error record in the output")
    print(f"{summary.chunks_decoded} chunk(s) decoded, {summary.chunks_skipped} already done, of "
          f"{summary.num_chunks} ({summary.num_requests} requests, {summary.errors} errors "
          f"in the decoded chunks); {summary.generated_tokens} tokens in "
          f"{summary.decode_seconds:.1f}s = {summary.tokens_per_second:.1f} tokens/s; "
          f"model load {load_seconds:.1f}s, wall {time.perf_counter() - started:.1f}s")
    if summary.merged:
        print(f"results written to {output}")
    elif not summary.complete:
        print("stopped early: rerun the same command to decode the remaining chunks")
    return 0
