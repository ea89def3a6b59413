"""`llmos eval`: a trained checkpoint's metrics on a task split, as JSON and TensorBoard.

The model is built and restored by `llmos_jax.cli.run_loading`, the
way `llmos train` builds it (`train.model_config`, `train.objective`, mesh
and rules), from a run's newest intact checkpoint or a params-only export
(`model_dir/export`, `model_dir/best`). The task's own metric functions
(seqio `metric_fns`) score the split through `llmos_jax.evaluation.evaluate`,
fed by the predictor the objective calls for
(`llmos_jax.evaluation.objective_predictors`; generation is set by
`DecodeConfig` in gin).

Results go to `<output_dir>/eval_results/<split>_step<N>.json` (with the
per-example targets and predictions beside it) and to the `eval` TensorBoard
run; `output_dir` defaults to the run's model_dir.
"""

from __future__ import annotations

import json
import logging
import pathlib

from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.cli.model_uris import run_source
from llmos_jax.cli.shared_flags import run_flags

log = logging.getLogger("llmos_jax.eval")

EVAL_EXAMPLE = ("llmos eval --gin_file=runs/sst2/config.gin --checkpoint=runs/sst2 "
                "--split=validation")


def eval_command() -> Command:
    """Builds the `llmos eval` command."""
    flags = (
        *run_flags("--gin.DecodeConfig.max_new_tokens=64"),
        Flag("task", "NAME", "Evaluate this seqio Task or Mixture instead of train.task_name."),
        Flag("split", "NAME", "The split to evaluate (default: train.eval_split, 'validation')."),
        Flag("output_dir", "DIR", "Where eval_results/ and tensorboard/eval go (default: the "
             "run's model_dir)."),
        Flag("batch_size", "N", "Examples per model call (default 32; rounded up to a multiple "
             "of the mesh's data-parallel size)."),
        Flag("max_examples", "N", "Evaluate only the first N examples of the split."),
        Flag("quantize", "int8", "Quantize the restored weights as `llmos serve --quantize=int8` "
             "does (int8 per output channel, dense layers and token embeddings); results go "
             "to MODEL_DIR/eval_int8 unless --output_dir is given."),
    )
    return Command(
        name="eval",
        summary="Evaluate a checkpoint on a task split with the task's metrics.",
        description="Evaluate a trained checkpoint or export on a task split with the task's "
        "metric functions (accuracy, F1, BLEU, ROUGE, perplexity...). The model is built from "
        "the run's gin file; results are written as JSON and TensorBoard scalars.",
        usage="llmos eval --gin_file=PATH --checkpoint=DIR [--split=NAME] [--task=NAME] "
        "[--output_dir=DIR] [--gin.NAME=VALUE ...]",
        flags=flags,
        example=EVAL_EXAMPLE,
        run=run_eval,
    )


def run_eval(flags: ParsedFlags) -> int:
    """Parses gin, restores the checkpoint, evaluates, prints and writes the results.

    On a `models:/` URI the results are also recorded on that version.
    """
    checkpoint, gin_files, fetched = run_source(flags, command="eval", example=EVAL_EXAMPLE)
    bindings, sources = flags.gin_bindings()
    from llmos_jax import runtime

    runtime.configure_host_runtime()  # before JAX allocates: see llmos_jax/runtime.py
    step, split, results, output_dir = evaluate_checkpoint(
        checkpoint, gin_files, bindings, sources, search_paths=flags.all("gin_search_path"),
        task=flags.one("task"), split=flags.one("split"),
        batch_size=flags.positive_int("batch_size", 32),
        max_examples=flags.positive_int("max_examples", None),
        output_dir=flags.one("output_dir"), quantize=flags.one("quantize"))
    print(json.dumps({"step": step, "split": split, "results": results}, indent=2,
                     sort_keys=True))
    print(f"results written to {output_dir / 'eval_results'} and {output_dir / 'tensorboard'}")
    if fetched is not None and flags.one("quantize"):
        print(f"not recorded on {fetched.uri}: these results are of its quantized weights")
    elif fetched is not None:
        from llmos_jax.registry.store import open_store
        from llmos_jax.registry.versions import record_eval

        record_eval(open_store(), fetched.name, fetched.version, results)
        print(f"results recorded on {fetched.uri}")
    return 0


def evaluate_checkpoint(checkpoint: str, gin_files: list[str], bindings: list[str],
                        sources: list[str], *, search_paths: list[str] = (),
                        task: str | None = None, split: str | None = None, batch_size: int = 32,
                        max_examples: int | None = None, output_dir: str | None = None,
                        quantize: str | None = None):
    """Evaluates one checkpoint; returns (step, split, results by task, output folder).

    Parses gin afresh, so one process may evaluate several runs in turn
    (`llmos models promote`).
    """
    import gin

    from llmos_jax.cli import run_loading as model_loading

    gin.clear_config()
    location = model_loading.find_checkpoint(checkpoint)
    model_loading.parse_run_gin(gin_files, bindings, model_dir=location.model_dir,
                                search_paths=search_paths, binding_sources=sources)

    import jax

    from llmos_jax.evaluation.evaluator import evaluate
    from llmos_jax.evaluation.objective_predictors import (feature_lengths, mesh_batch_size,
                                                           model_functions)

    split = split or model_loading.train_settings()["eval_split"]
    loaded = model_loading.load_for_inference(
        gin_files, checkpoint=checkpoint, task_name=task, split=split,
        devices=jax.devices(), parse=False, location=location, quantize=quantize)
    batch_size = mesh_batch_size(batch_size, loaded.mesh)
    provider = loaded.first_task
    lengths = feature_lengths(loaded.settings["sequence_length"], provider)
    functions = model_functions(
        loaded.objective, loaded.model, loaded.params, provider=provider, lengths=lengths,
        batch_size=batch_size,
        decode_config=model_loading.decode_config_from_gin(loaded.vocabularies.outputs))

    output_path = pathlib.Path(output_dir or location.model_dir)
    if quantize and not output_dir:  # the float results of this step stay where they are
        output_path = output_path / f"eval_{quantize}"
    log.info("evaluating %s (step %d) on %s/%s", location.path, location.step,
             loaded.task_name, split)
    results = evaluate(loaded.task_name, split, **functions, output_dir=output_path,
                       step=location.step, batch_size=batch_size, sequence_length=lengths,
                       max_examples=max_examples)
    return location.step, split, results, output_path
