"""Runs a seqio Task's (or Mixture's) metric functions over a whole split.

seqio's own ``Evaluator`` expects ``predict_fn``/``score_fn`` that consume a
feature-converted ``tf.data.Dataset``; this one hands the model plain
batches of task examples (lists of dicts of NumPy values, in split order),
so a decoding engine or a test double can serve it. It follows seqio's
evaluation contract otherwise:

- targets are the example's ``targets_pretokenized`` text when the Task kept
  it, else its ``targets`` ids decoded by the Task's vocabulary; both pass
  through the Task's ``postprocess_fn(target, example=..., is_target=True)``;
- predictions may be text, or token ids that the targets vocabulary decodes;
  they pass through ``postprocess_fn(prediction, example=..., is_target=False)``;
- ``(targets, predictions)`` metric functions get the predictions,
  ``(targets, scores)`` ones get the ``score_fn`` rows (see
  ``language_modeling.SCORE_FIELDS``).

Results are returned as ``{task_name: {metric: value}}``, written as JSON to
``<output_dir>/eval_results/<split>_step<step>.json`` (with a per-task JSONL
of targets and predictions beside it), and as TensorBoard scalars
``<task>/<metric>`` in the ``eval`` run via :class:`MetricsWriter`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from llmos_jax.data.providers import get_provider
from llmos_jax.errors import UserError
from llmos_jax.monitoring.metrics_writer import MetricsWriter

Example = Mapping[str, Any]
PredictFn = Callable[[list[Example]], Sequence[Any]]
ScoreFn = Callable[[list[Example]], Sequence[Sequence[float]]]
RESULTS_DIRNAME = "eval_results"
TENSORBOARD_SPLIT = "eval"  # The validation split's run, shared with in-training evaluation.


def metrics_split_name(split: str) -> str:
    """The metrics.jsonl `split` and TensorBoard run of `split`'s results.

    Validation results join the training run's "eval" curve; any other split
    gets its own ("eval_test"), so test scores never plot as validation ones.
    """
    return TENSORBOARD_SPLIT if split == "validation" else f"{TENSORBOARD_SPLIT}_{split}"


@dataclasses.dataclass(frozen=True)
class TaskOutputs:
    """What one Task's metrics were computed from, in split order."""

    targets: list[Any]
    predictions: list[Any] | None
    scores: list[Any] | None


def _batches(examples: Iterator[Example], batch_size: int) -> Iterator[list[Example]]:
    batch: list[Example] = []
    for example in examples:
        batch.append(example)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _as_text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _decode_target(task: seqio.Task, example: Example) -> str:
    if "targets_pretokenized" in example:
        return _as_text(example["targets_pretokenized"])
    return task.output_features["targets"].vocabulary.decode(np.asarray(example["targets"]).tolist())


def _decode_prediction(task: seqio.Task, prediction: Any) -> Any:
    """Text stays text; token ids are decoded by the targets vocabulary."""
    prediction = _as_text(prediction)
    if isinstance(prediction, str):
        return prediction
    return task.output_features["targets"].vocabulary.decode(np.asarray(prediction).tolist())


def _model_outputs(task_name: str, what: str, fn: Callable, batch: list[Example]) -> list[Any]:
    outputs = list(fn(batch))
    if len(outputs) != len(batch):
        raise UserError(
            f"Evaluating {task_name!r}: the {what} returned {len(outputs)} outputs for a batch "
            f"of {len(batch)} examples; it must return one per example, in order."
        )
    return outputs


def _collect_outputs(
    task: seqio.Task,
    split: str,
    *,
    predict_fn: PredictFn | None,
    score_fn: ScoreFn | None,
    batch_size: int,
    sequence_length: Mapping[str, int] | None,
    max_examples: int | None,
) -> TaskOutputs:
    dataset = task.get_dataset(sequence_length, split=split, shuffle=False, num_epochs=1)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    targets: list[Any] = []
    predictions: list[Any] | None = [] if predict_fn else None
    scores: list[Any] | None = [] if score_fn else None
    for batch in _batches(dataset.as_numpy_iterator(), batch_size):
        for example in batch:
            targets.append(task.postprocess_fn(_decode_target(task, example), example=example, is_target=True))
        if predict_fn is not None:
            outputs = _model_outputs(task.name, "predict_fn", predict_fn, batch)
            predictions.extend(
                task.postprocess_fn(_decode_prediction(task, output), example=example, is_target=False)
                for output, example in zip(outputs, batch)
            )
        if score_fn is not None:
            scores.extend(_model_outputs(task.name, "score_fn", score_fn, batch))
    if not targets:
        raise UserError(f"Evaluating {task.name!r}: split {split!r} has no examples.")
    return TaskOutputs(targets, predictions, scores)


def _check_metric_fns(task: seqio.Task, predict_fn: PredictFn | None, score_fn: ScoreFn | None) -> None:
    if task.predict_with_aux_metric_fns:
        raise UserError(
            f"Task {task.name!r} has (targets, predictions, aux_values) metric functions, "
            "which this evaluator does not support; use (targets, predictions) ones."
        )
    needs = [("predict_fn", task.predict_metric_fns, predict_fn), ("score_fn", task.score_metric_fns, score_fn)]
    for name, metric_fns, fn in needs:
        if metric_fns and fn is None:
            names = [getattr(m, "__name__", repr(m)) for m in metric_fns]
            raise UserError(
                f"Task {task.name!r} has metric functions {names} that need a {name}; pass one."
            )


def evaluate_task(
    task: seqio.Task,
    split: str,
    *,
    predict_fn: PredictFn | None = None,
    score_fn: ScoreFn | None = None,
    batch_size: int = 32,
    sequence_length: Mapping[str, int] | None = None,
    max_examples: int | None = None,
) -> tuple[dict[str, float], TaskOutputs]:
    """One Task's metrics over ``split``, and the outputs they came from.

    ``predict_fn``/``score_fn`` are only called when the Task has metric
    functions of that kind.

    Raises:
      UserError: the Task has no metric functions, lacks a needed function,
        the model returns the wrong number of outputs, or two metric
        functions report the same name.
    """
    if not task.metric_fns:
        raise UserError(
            f"Task {task.name!r} has no metric functions; register it with metric_fns=[...] "
            "(see llmos_jax.metrics) to evaluate it."
        )
    _check_metric_fns(task, predict_fn, score_fn)
    outputs = _collect_outputs(
        task,
        split,
        predict_fn=predict_fn if task.predict_metric_fns else None,
        score_fn=score_fn if task.score_metric_fns else None,
        batch_size=batch_size,
        sequence_length=sequence_length,
        max_examples=max_examples,
    )
    metrics: dict[str, float] = {}
    runs = [(fn, outputs.predictions) for fn in task.predict_metric_fns]
    runs += [(fn, outputs.scores) for fn in task.score_metric_fns]
    for metric_fn, model_outputs in runs:
        for name, value in metric_fn(outputs.targets, model_outputs).items():
            if name in metrics:
                raise UserError(f"Task {task.name!r}: two metric functions both report {name!r}; rename one.")
            metrics[name] = float(value)
    return metrics, outputs


def _eval_tasks(name: str, split: str) -> list[seqio.Task]:
    """The Task ``name``, or the sub-Tasks of Mixture ``name`` that have metrics and ``split``."""
    provider = get_provider(name, split, setting="task", split_setting="split")
    if isinstance(provider, seqio.Task):
        return [provider]
    tasks = [t for t in provider.tasks if t.metric_fns and split in t.splits]
    if not tasks:
        raise UserError(f"Mixture {name!r} has no Task with metric functions and a {split!r} split.")
    return tasks


def _json_value(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def write_results(
    output_dir: str | pathlib.Path,
    split: str,
    step: int,
    results: Mapping[str, Mapping[str, float]],
    outputs: Mapping[str, TaskOutputs],
) -> pathlib.Path:
    """Writes the JSON summary, per-task outputs and TensorBoard scalars; returns the JSON path."""
    results_dir = pathlib.Path(output_dir) / RESULTS_DIRNAME
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"Cannot write evaluation results to '{results_dir}' ({error}); "
                        "choose a writable output directory.") from error
    stem = f"{split}_step{step}"
    summary = {
        "step": step,
        "split": split,
        "results": {task: {k: _json_value(v) for k, v in m.items()} for task, m in results.items()},
        "num_examples": {task: len(o.targets) for task, o in outputs.items()},
    }
    summary_path = results_dir / f"{stem}.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for task_name, task_outputs in outputs.items():
        with open(results_dir / f"{stem}_{task_name}.jsonl", "w", encoding="utf-8") as lines:
            for index, target in enumerate(task_outputs.targets):
                record = {"target": target}
                if task_outputs.predictions is not None:
                    record["prediction"] = task_outputs.predictions[index]
                if task_outputs.scores is not None:
                    record["score"] = np.asarray(task_outputs.scores[index]).tolist()
                lines.write(json.dumps(record, default=str) + "\n")
    with MetricsWriter(output_dir) as writer:
        scalars = {f"{task}/{name}": value for task, m in results.items() for name, value in m.items()}
        writer.write_scalars(step, scalars, split=metrics_split_name(split))
    return summary_path


def evaluate(
    name: str,
    split: str,
    *,
    predict_fn: PredictFn | None = None,
    score_fn: ScoreFn | None = None,
    output_dir: str | pathlib.Path | None = None,
    step: int = 0,
    batch_size: int = 32,
    sequence_length: Mapping[str, int] | None = None,
    max_examples: int | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluates a Task, or every metric-bearing Task of a Mixture, on ``split``.

    Args:
      name: a registered (or built-in) seqio Task or Mixture name.
      split: the split to evaluate, e.g. ``"validation"``.
      predict_fn: a batch of examples to one prediction each (text or token ids).
      score_fn: a batch of examples to one score row each
        ``(log_likelihood, num_tokens[, num_correct])``.
      output_dir: where to write JSON and TensorBoard results; none if ``None``.
      step: the training step the results belong to.
      batch_size: examples per ``predict_fn``/``score_fn`` call.
      sequence_length: passed to ``Task.get_dataset`` (``None``: no trimming).
      max_examples: evaluate only the first examples of each Task's split.

    Returns:
      ``{task_name: {metric_name: value}}``.
    """
    results: dict[str, dict[str, float]] = {}
    outputs: dict[str, TaskOutputs] = {}
    for task in _eval_tasks(name, split):
        results[task.name], outputs[task.name] = evaluate_task(
            task,
            split,
            predict_fn=predict_fn,
            score_fn=score_fn,
            batch_size=batch_size,
            sequence_length=sequence_length,
            max_examples=max_examples,
        )
    if output_dir is not None:
        write_results(output_dir, split, step, results, outputs)
    return results
