"""`llmos eval`: a trained checkpoint's metrics on a task split, as JSON and TensorBoard.

The model is built from the run's gin file the way `llmos train` builds it
(`train.model_config`, `train.objective`, mesh and rules), its parameters
are read from a run's latest checkpoint or from a params-only export, and
the task's own metric functions (seqio `metric_fns`) score the split through
`llmos_jax.evaluation.evaluate`:

==========================  ==========================================================
objective                   what the model gives the metrics
==========================  ==========================================================
SequenceClassification      the argmax label (`predictors.sequence_classifier`)
TokenClassification         one tag per word (`predictors.token_classifier`)
Seq2Seq, CausalLm           generated text (`DecodeConfig` in gin) and/or target scores
==========================  ==========================================================

Results go to `<output_dir>/eval_results/<split>_step<N>.json` (with the
per-example targets and predictions beside it) and to the `eval` TensorBoard
run; `output_dir` defaults to the run's model_dir.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmos_jax.errors import UserError

if TYPE_CHECKING:
    from llmos_jax.cli.main import Command, ParsedFlags

log = logging.getLogger("llmos_jax.eval")

EVAL_EXAMPLE = ("llmos eval --gin_file=runs/sst2/config.gin --checkpoint=runs/sst2 "
                "--split=validation")
_VOCABULARY_FEATURES = ("input_ids", "targets", "inputs")


def eval_command() -> Command:
    """Builds the `llmos eval` command."""
    from llmos_jax.cli.main import Command, Flag

    flags = (
        Flag("gin_file", "PATH", "The run's gin file (e.g. its model_dir/config.gin); repeatable, "
             "later files win.", repeatable=True),
        Flag("gin.", "VALUE", "Override one gin binding, e.g. "
             "--gin.DecodeConfig.max_new_tokens=64.", repeatable=True),
        Flag("gin_search_path", "DIR", "Extra folder to search for gin files; repeatable.",
             repeatable=True),
        Flag("checkpoint", "DIR", "A run's model_dir (its latest checkpoint), its checkpoints/ "
             "folder, or a params-only export folder (model_dir/export)."),
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


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    """Where parameters come from, and what was recorded with them."""

    path: pathlib.Path      # What `read_our_params` reads: a model_dir, checkpoints/ or export.
    step: int
    meta: dict[str, Any]
    model_dir: pathlib.Path  # The run folder: default output_dir.


def find_checkpoint(location: str) -> CheckpointLocation:
    """The export or latest checkpoint at `location` (a --checkpoint value), with its metadata.

    Raises:
      UserError: the folder is missing or holds neither an export nor a checkpoint.
    """
    path = pathlib.Path(location).expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"--checkpoint={location!r}: {path} is not a directory; give a run's "
                        "model_dir, its checkpoints/ folder or its export/ folder.")
    if (path / "params").is_dir():  # `export_params`.
        meta_file = path / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        model_dir = path.parent if path.name == "export" else path
        return CheckpointLocation(path, int(meta.get("step", 0)), meta, model_dir)
    checkpoints = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and p.is_dir())
    if not steps:
        raise UserError(f"--checkpoint={location!r} holds no checkpoint (no {path}/checkpoints/"
                        f"<step>) and no export (no {path}/params); train first, or point at "
                        "the run's model_dir or export/ folder.")
    from llmos_jax.training.checkpointing import Checkpointer

    checkpointer = Checkpointer(checkpoints.parent, save_every=1, async_save=False)
    try:
        meta = checkpointer.read_meta(steps[-1])
    finally:
        checkpointer.close()
    return CheckpointLocation(path, steps[-1], meta, checkpoints.parent)


def train_settings() -> dict[str, Any]:
    """`train`'s arguments as gin would give them: its defaults, overridden by the bindings.

    An adapter until the trainer exposes the model-building part of `train`.
    """
    import gin
    from llmos_jax.training import trainer

    parameters = inspect.signature(trainer.train).parameters
    settings = {name: p.default for name, p in parameters.items()
                if p.default is not inspect.Parameter.empty}
    settings.update(gin.get_bindings(trainer.train))
    for required in ("model_config", "task_name"):
        if settings.get(required) is gin.REQUIRED:
            settings[required] = None
    if settings["model_config"] is None:
        raise UserError("the gin files bind no train.model_config; pass the run's gin file "
                        "(e.g. its model_dir/config.gin) with --gin_file.")
    return settings


def task_vocabulary(provider) -> Any:
    """The vocabulary a run records for a task (as `LMBatches`/`ExampleBatches` pick it)."""
    features = provider.output_features
    for key in _VOCABULARY_FEATURES:
        if key in features:
            return features[key].vocabulary
    return next(iter(features.values())).vocabulary


def check_vocabulary(meta: Mapping[str, Any], vocabulary, *, checkpoint: str,
                     task_name: str) -> None:
    """Refuses to evaluate a checkpoint with a task whose vocabulary maps ids to other text."""
    from llmos_jax.training.run_metadata import describe_vocabulary

    saved = meta.get("vocabulary")
    current = describe_vocabulary(vocabulary)
    if saved is not None and saved != current:
        raise UserError(
            f"--checkpoint={checkpoint!r} was trained with vocabulary {saved} but task "
            f"{task_name!r} uses {current}; evaluate it on a task with the training vocabulary "
            "(the run's gin file and task settings), or pass the right --checkpoint.")


def _warn_on_config_drift(meta: Mapping[str, Any], model_config) -> None:
    saved = meta.get("model_config")
    if not saved:
        return
    current = json.loads(json.dumps(dataclasses.asdict(model_config), default=str))
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        log.warning("the gin model config differs from the checkpoint's in %s; evaluating with "
                    "the gin file's values", ", ".join(changed))


def restore_params(location: CheckpointLocation, spec, shardings, checkpoint: str):
    """The checkpoint's parameters in the model's tree structure, placed with `shardings`."""
    import jax

    from llmos_jax.training.checkpointing import first_shape_mismatch
    from llmos_jax.training.warm_start import flat_params, read_our_params

    saved = read_our_params(str(location.path))
    expected = flat_params(spec.abstract_params)
    mismatch = first_shape_mismatch({k: v.shape for k, v in saved.items()},
                                    {k: v.shape for k, v in expected.items()})
    if mismatch:
        raise UserError(f"--checkpoint={checkpoint!r} does not fit the gin file's model: "
                        f"{mismatch}. Pass the gin file the run was trained with (its "
                        "model_dir/config.gin).")
    placed = [jax.device_put(saved[name].astype(abstract.dtype), sharding)
              for (name, abstract), sharding in zip(expected.items(),
                                                    flat_params(shardings).values())]
    return jax.tree.unflatten(jax.tree.structure(spec.abstract_params), placed)


def _int_flag(flags: ParsedFlags, name: str, default: int | None) -> int | None:
    value = flags.one(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"--{name}={value!r} is not an integer.") from None
    if number <= 0:
        raise UserError(f"--{name}={number} must be positive.")
    return number


def _parse_gin(flags: ParsedFlags, model_dir: pathlib.Path) -> None:
    from llmos_jax.cli import gin_config

    gin_files = flags.all("gin_file")
    if not gin_files:
        raise UserError(f"llmos eval needs --gin_file, the run's gin file, e.g. {EVAL_EXAMPLE}")
    bindings, sources = [f"MODEL_DIR = {str(model_dir)!r}"], ["--checkpoint"]
    for given in flags.values:
        if given.flag.name == "gin.":
            bindings.append(f"{given.key} = {given.value}")
            sources.append(given.spelled)
    _register_decode_config()
    gin_config.parse_gin(gin_files, bindings, flags.all("gin_search_path"),
                         binding_sources=sources)


_DECODE_CONFIG = "llmos_jax.inference.DecodeConfig"


def _register_decode_config() -> None:
    """Makes `DecodeConfig` a gin configurable (once), so `--gin.DecodeConfig.NAME=...` works."""
    import gin
    from llmos_jax.inference import DecodeConfig

    try:
        gin.external_configurable(DecodeConfig, module="llmos_jax.inference")
    except ValueError:  # Already registered (an earlier eval in this process).
        pass


def decode_config(vocabulary) -> Any:
    """The gin-bound `DecodeConfig`, stopping at the vocabulary's EOS unless gin says otherwise."""
    import gin
    from llmos_jax.inference import DecodeConfig

    return DecodeConfig(**{"eos_id": vocabulary.eos_id, **gin.get_bindings(_DECODE_CONFIG)})


def _lengths(sequence_length: int | Mapping[str, int], provider) -> dict[str, int]:
    """Per-feature lengths of the task's rank-1 features, as training cut them."""
    features = {k: f for k, f in provider.output_features.items() if f.rank == 1}
    if isinstance(sequence_length, Mapping):
        return {k: int(v) for k, v in sequence_length.items() if k in features}
    return dict.fromkeys(features, int(sequence_length))


def model_functions(objective, model, params, *, provider, lengths: Mapping[str, int],
                    batch_size: int) -> dict[str, Any]:
    """`predict_fn`/`score_fn` for the evaluator, chosen by the training objective."""
    from llmos_jax.evaluation import predictors
    from llmos_jax.training.objectives import (
        CausalLm,
        Seq2Seq,
        SequenceClassification,
        TokenClassification,
    )

    if isinstance(objective, (SequenceClassification, TokenClassification)):
        factory = (predictors.sequence_classifier if isinstance(objective, SequenceClassification)
                   else predictors.token_classifier)
        if "input_ids" not in lengths:
            raise UserError(f"train.objective={type(objective).__name__} reads 'input_ids', "
                            f"which task {provider.name!r} does not have; pass --task.")
        return {"predict_fn": factory(model, params, sequence_length=lengths["input_ids"],
                                      batch_size=batch_size)}
    if isinstance(objective, (CausalLm, Seq2Seq)):
        vocabulary = provider.output_features["targets"].vocabulary
        max_input = lengths.get("inputs")
        return {
            "predict_fn": predictors.generator(
                model, params, vocabulary=vocabulary, decode_config=decode_config(vocabulary),
                max_input_length=max_input, batch_size=batch_size),
            "score_fn": predictors.target_scorer(model, params, max_input_length=max_input),
        }
    raise UserError(f"llmos eval has no predictor for train.objective="
                    f"{type(objective).__name__}; it evaluates SequenceClassification, "
                    "TokenClassification, Seq2Seq and CausalLm runs.")


def run_eval(flags: ParsedFlags) -> int:
    """Parses gin, restores the checkpoint, evaluates, prints and writes the results."""
    checkpoint = flags.one("checkpoint")
    if not checkpoint:
        raise UserError(f"llmos eval needs --checkpoint, e.g. {EVAL_EXAMPLE}")
    location = find_checkpoint(checkpoint)
    _parse_gin(flags, location.model_dir)
    batch_size = _int_flag(flags, "batch_size", 32)
    max_examples = _int_flag(flags, "max_examples", None)

    from flax import nnx

    from llmos_jax.data.registry import get_provider
    from llmos_jax.evaluation.evaluator import evaluate
    from llmos_jax.partitioning import (
        LogicalSharder,
        build_mesh,
        data_parallel_size,
        rules_from_mapping,
    )
    from llmos_jax.training.objectives import CausalLm
    from llmos_jax.training.train_state import model_spec, param_shardings

    settings = train_settings()
    task_name = flags.one("task") or settings["task_name"]
    if not task_name:
        raise UserError("no task to evaluate: the gin files bind no train.task_name; pass --task.")
    split = flags.one("split") or settings["eval_split"]
    provider = get_provider(task_name, split, setting="--task" if flags.one("task") else
                            "train.task_name", split_setting="--split")
    tasks = provider.tasks if hasattr(provider, "tasks") else [provider]
    check_vocabulary(location.meta, task_vocabulary(tasks[0]), checkpoint=checkpoint,
                     task_name=task_name)
    model_config = settings["model_config"]
    _warn_on_config_drift(location.meta, model_config)

    objective = settings["objective"] or CausalLm()
    mesh = build_mesh(settings["mesh_config"])
    rules = rules_from_mapping(settings["axis_rules"])
    sharder = LogicalSharder(mesh, rules)
    spec = model_spec(lambda rngs: objective.build_model(model_config, rngs=rngs, shard=sharder),
                      settings["seed"])
    params = restore_params(location, spec, param_shardings(spec, mesh, rules), checkpoint)
    model = nnx.merge(spec.graphdef, params)
    parallel = data_parallel_size(mesh)
    batch_size = -(-batch_size // parallel) * parallel
    lengths = _lengths(settings["sequence_length"], tasks[0])
    functions = model_functions(objective, model, params, provider=tasks[0], lengths=lengths,
                                batch_size=batch_size)

    output_dir = pathlib.Path(flags.one("output_dir") or location.model_dir)
    log.info("evaluating %s (step %d) on %s/%s", location.path, location.step, task_name, split)
    results = evaluate(task_name, split, **functions, output_dir=output_dir, step=location.step,
                       batch_size=batch_size, sequence_length=lengths, max_examples=max_examples)
    print(json.dumps({"step": location.step, "split": split, "results": results}, indent=2,
                     sort_keys=True))
    print(f"results written to {output_dir / 'eval_results'} and {output_dir / 'tensorboard'}")
    return 0
