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
from llmos_jax.cli.shared_flags import required, run_flags, run_gin_files

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
    """Parses gin, restores the checkpoint, evaluates, prints and writes the results."""
    checkpoint = required(flags, "checkpoint", command="eval", example=EVAL_EXAMPLE)
    gin_files = run_gin_files(flags, command="eval", example=EVAL_EXAMPLE)

    from llmos_jax.cli import run_loading as model_loading

    location = model_loading.find_checkpoint(checkpoint)
    bindings, sources = flags.gin_bindings()
    model_loading.parse_run_gin(gin_files, bindings, model_dir=location.model_dir,
                                search_paths=flags.all("gin_search_path"),
                                binding_sources=sources)
    batch_size = flags.positive_int("batch_size", 32)
    max_examples = flags.positive_int("max_examples", None)

    import jax

    from llmos_jax.evaluation.evaluator import evaluate
    from llmos_jax.evaluation.objective_predictors import (feature_lengths, mesh_batch_size,
                                                           model_functions)

    split = flags.one("split") or model_loading.train_settings()["eval_split"]
    loaded = model_loading.load_for_inference(
        gin_files, checkpoint=checkpoint, task_name=flags.one("task"), split=split,
        devices=jax.devices(), parse=False, location=location)
    batch_size = mesh_batch_size(batch_size, loaded.mesh)
    task = loaded.first_task
    lengths = feature_lengths(loaded.settings["sequence_length"], task)
    functions = model_functions(
        loaded.objective, loaded.model, loaded.params, provider=task, lengths=lengths,
        batch_size=batch_size,
        decode_config=model_loading.decode_config_from_gin(loaded.vocabularies.outputs))

    output_dir = pathlib.Path(flags.one("output_dir") or location.model_dir)
    log.info("evaluating %s (step %d) on %s/%s", location.path, location.step,
             loaded.task_name, split)
    results = evaluate(loaded.task_name, split, **functions, output_dir=output_dir,
                       step=location.step, batch_size=batch_size, sequence_length=lengths,
                       max_examples=max_examples)
    print(json.dumps({"step": location.step, "split": split, "results": results}, indent=2,
                     sort_keys=True))
    print(f"results written to {output_dir / 'eval_results'} and {output_dir / 'tensorboard'}")
    return 0
