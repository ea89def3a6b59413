"""Evaluation inside training: the held-out loss, and the task's own metrics every N steps.

Two evaluations run while `train` trains:

- `heldout_metrics`: the objective's loss and metrics over `train.eval_batches`
  batches of `train.eval_split`, every `train.eval_every` steps;
- `PeriodicEvaluator` (`train.evaluator = @PeriodicEvaluator()`; off by
  default): the task's seqio metric functions (accuracy, F1, BLEU, ROUGE...)
  through `llmos_jax.evaluation.evaluator.evaluate`, fed by the predictor the
  objective calls for: the numbers `llmos eval` reports for a checkpoint.
  Results go to `model_dir/eval_results/<split>_step<N>.json` (per-example
  outputs beside it) and to the `eval` TensorBoard run as `<task>/<metric>`.

With `PeriodicEvaluator.keep_best_metric`, the parameters of the best
evaluation so far are exported to `model_dir/best/` (`params/`, and
`meta.json` with the metric, its value and the step; like `model_dir/export`
it carries its vocabularies and MODEL_CARD.md, so `llmos serve` loads it).
That folder is outside `checkpoints/`, so the keep-K rotation never deletes
it; a resumed run reads `best/meta.json` and replaces the export only with a
better step. The export is written beside it and swapped in whole, so a crash
mid-export leaves the previous best as it was. `llmos eval
--checkpoint=model_dir/best` evaluates it, `llmos infer` decodes with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np

from llmos_jax.errors import UserError
from llmos_jax.inference.decode_config import DecodeConfig, with_default_eos
from llmos_jax.inference.decoding_engine import DecodingEngine
from llmos_jax.objectives.base import PREDICTS_TEXT
from llmos_jax.partitioning import Layout
from llmos_jax.data.vocabulary_files import TaskVocabularies
from llmos_jax.objectives import Objective
from llmos_jax.objectives.model_building import ModelSpec, Params
from llmos_jax.training.self_contained_export import write_export

log = logging.getLogger("llmos_jax.train")

BEST_DIRNAME = "best"
_MODES = ("max", "min")


class EvalBatches(Protocol):
    """Held-out batches: `eval_batches(n)` walks a split once (n batches, or all)."""

    def eval_batches(self, num_batches: int | None = None) -> Iterator[Mapping[str, np.ndarray]]: ...


def heldout_metrics(eval_step, params: Params, eval_data: EvalBatches, num_batches: int | None,
                    objective: Objective, layout: Layout) -> dict[str, float]:
    """The objective's metrics over `num_batches` eval batches (sums added, then divided)."""
    totals: dict[str, float] = {}
    for batch in eval_data.eval_batches(num_batches):
        sums = jax.device_get(eval_step(params, layout.global_batch(batch)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return {key: float(value) for key, value in objective.metrics(totals).items()}


@dataclasses.dataclass(frozen=True)
class PeriodicEvaluator:
    """The task's metrics every N steps of training, and optionally the best step kept.

    Attributes:
      every: Steps between evaluations (and one at the last step); None:
        `train.eval_every`.
      task_name: The seqio Task or Mixture evaluated; None: `train.task_name`.
      split: The split evaluated; None: `train.eval_split`.
      batch_size: Examples per model call (rounded up to a multiple of the
        mesh's data-parallel size).
      max_examples: Evaluate only the first N examples (None: the whole split).
      decode_config: How generation objectives decode (`@DecodeConfig()`);
        None: greedy. An unset `eos_id` stops at the targets vocabulary's EOS.
      keep_best_metric: Export the best evaluation's parameters to
        `model_dir/best` by this metric: its name (`'accuracy'`), or
        `'task/metric'` when several tasks of a Mixture report it. None: no
        export.
      mode: `'max'` (higher is better) or `'min'`.
    """

    every: int | None = None
    task_name: str | None = None
    split: str | None = None
    batch_size: int = 32
    max_examples: int | None = None
    decode_config: DecodeConfig | None = None
    keep_best_metric: str | None = None
    mode: str = "max"

    def __post_init__(self) -> None:
        for name in ("every", "batch_size", "max_examples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"PeriodicEvaluator.{name}={value} must be positive.")
        if self.mode not in _MODES:
            raise UserError(f"PeriodicEvaluator.mode={self.mode!r} must be 'max' (higher "
                            "keep_best_metric is better) or 'min'.")


@dataclasses.dataclass(frozen=True)
class BestExport:
    """The best evaluation so far, whose parameters are in `directory`."""

    step: int
    metric: str
    value: float
    directory: pathlib.Path


def metric_value(results: Mapping[str, Mapping[str, float]], name: str) -> float:
    """The value of metric `name` (`'accuracy'` or `'task/accuracy'`) in `evaluate`'s results.

    Raises:
      UserError: no metric, or several tasks' metrics, answer to `name`.
    """
    flat = {f"{task}/{metric}": value for task, metrics in results.items()
            for metric, value in metrics.items()}
    if name in flat:
        return flat[name]
    matches = [metrics[name] for metrics in results.values() if name in metrics]
    if len(matches) == 1:
        return matches[0]
    what = "several tasks report" if matches else "the evaluation reports no"
    raise UserError(f"PeriodicEvaluator.keep_best_metric={name!r}: {what} metric {name!r}; "
                    f"name one of {sorted(flat)}.")


def _read_best(directory: pathlib.Path, metric: str, mode: str) -> BestExport | None:
    """The best export a previous invocation of this run left, if it ranks by `metric`."""
    meta_file = directory / "meta.json"
    if not meta_file.exists():
        return None
    best = json.loads(meta_file.read_text()).get("best", {})
    if best.get("metric") != metric or best.get("mode") != mode:
        log.warning("%s holds the best step by %s (%s); it will be replaced by the best by %r "
                    "(%s)", directory, best.get("metric"), best.get("mode"), metric, mode)
        return None
    return BestExport(int(best["step"]), metric, float(best["value"]), directory)


class TaskEvaluation:
    """A `PeriodicEvaluator` bound to one run: when to evaluate, with what, where results go.

    Args:
      config: The `PeriodicEvaluator`.
      objective: The run's objective (it chooses the predictor).
      spec: The run's model spec (its graph takes the live parameters).
      layout: The run's layout (batches are a multiple of its data-parallel size).
      task_name, split: `train.task_name` / `train.eval_split`, unless `config` names others.
      default_every: `train.eval_every`, unless `config.every` is set.
      sequence_length: `train.sequence_length`, as examples are cut.
      model_dir: Where results and `best/` go.
      write: Whether this host writes results (the chief); every host exports.
      vocabularies: The task's vocabularies, carried by the `best/` export so
        that it serves with no gin file (None: none carried).

    Raises:
      UserError: no interval, an objective no predictor serves, or a task or
        split that does not exist (all before training starts).
    """

    def __init__(self, config: PeriodicEvaluator, *, objective: Objective, spec: ModelSpec,
                 layout: Layout, task_name: str, split: str, default_every: int,
                 sequence_length: int | Mapping[str, int], model_dir: pathlib.Path,
                 write: bool, vocabularies: TaskVocabularies | None = None,
                 params_for_export: Callable[[Params], Params] | None = None):
        from llmos_jax.data.tensorflow_host import import_seqio_modules

        import_seqio_modules()  # `llmos train` may have parsed gin without them
        from llmos_jax.data.providers import get_provider
        from llmos_jax.evaluation.objective_predictors import (check_objective, feature_lengths,
                                                               mesh_batch_size)

        check_objective(objective, caller="train.evaluator")
        self.every = config.every or default_every
        if not self.every:
            raise UserError("train.evaluator is set but train.eval_every=0; set "
                            "PeriodicEvaluator.every to the steps between evaluations.")
        self.config, self._objective, self._spec = config, objective, spec
        # A LoRA run's best/ holds the merged weights, like its export/.
        self._params_for_export = params_for_export or (lambda params: params)
        self.task_name = config.task_name or task_name
        self.split = config.split or split
        provider = get_provider(
            self.task_name, self.split,
            setting="PeriodicEvaluator.task_name" if config.task_name else "train.task_name",
            split_setting="PeriodicEvaluator.split" if config.split else "train.eval_split")
        self._task = (getattr(provider, "tasks", None) or [provider])[0]
        self._lengths = feature_lengths(sequence_length, self._task)
        self._batch_size = mesh_batch_size(config.batch_size, layout.mesh)
        self._decode_config = self._with_eos(config.decode_config)
        self._engine: DecodingEngine | None = None
        self._model_dir, self._write = model_dir, write
        self._vocabularies = vocabularies
        self.results: dict[str, dict[str, float]] = {}
        self.best = (_read_best(model_dir / BEST_DIRNAME, config.keep_best_metric, config.mode)
                     if config.keep_best_metric else None)

    def _with_eos(self, decode_config: DecodeConfig | None) -> DecodeConfig | None:
        targets = self._task.output_features.get("targets")
        eos_id = None if targets is None else targets.vocabulary.eos_id
        return None if decode_config is None else with_default_eos(decode_config, eos_id)

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0 or last

    def run(self, step: int, params: Params, meta: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """Evaluates `params` (the state at `step`), writes the results, keeps them if best."""
        from llmos_jax.evaluation.evaluator import evaluate
        from llmos_jax.evaluation.objective_predictors import model_functions

        started = time.perf_counter()
        model = self._spec.merge(params)
        if self._engine is None and getattr(self._objective, "predicts", None) == PREDICTS_TEXT:
            # One engine for the whole run: each evaluation reuses its compiled programs.
            self._engine = DecodingEngine(model, params)
        functions = model_functions(
            self._objective, model, params, provider=self._task,
            lengths=self._lengths, batch_size=self._batch_size,
            decode_config=self._decode_config, caller="train.evaluator",
            task_setting="PeriodicEvaluator.task_name", engine=self._engine)
        self.results = evaluate(
            self.task_name, self.split, **functions,
            output_dir=self._model_dir if self._write else None, step=step,
            batch_size=self._batch_size, sequence_length=self._lengths,
            max_examples=self.config.max_examples)
        log.info("step %d: %s/%s metrics %s (%.1fs)", step, self.task_name, self.split,
                 self.results, time.perf_counter() - started)
        if self.config.keep_best_metric:
            self._keep_if_best(step, params, meta)
        return self.results

    def _keep_if_best(self, step: int, params: Params, meta: Mapping[str, Any]) -> None:
        name, mode = self.config.keep_best_metric, self.config.mode
        value = metric_value(self.results, name)
        if not math.isfinite(value):
            return
        if self.best is not None and not (value > self.best.value if mode == "max"
                                          else value < self.best.value):
            return
        directory = self._model_dir / BEST_DIRNAME
        # `export_params` swaps the new folder in whole: a crash leaves the old best intact.
        record = {"metric": name, "value": value, "mode": mode, "step": step,
                  "task_name": self.task_name, "split": self.split, "results": self.results}
        flat = {f"{task}/{metric}": value for task, metrics in self.results.items()
                for metric, value in metrics.items()}
        write_export(directory, self._params_for_export(params),
                     {**meta, "step": step, "best": record},
                     vocabularies=self._vocabularies, metrics=flat)
        self.best = BestExport(step, name, value, directory)
        log.info("step %d is the best so far by %s=%g: exported to %s", step, name, value,
                 directory)
