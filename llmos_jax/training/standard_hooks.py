"""The hooks every run has: divergence guard, metrics, evaluation, checkpoints, export, samples.

`trainer.train` subscribes them to the loop in this order, each on the
schedule its `train.*` setting gives:

1. `DivergenceGuard` (every `log_every`, the last step, on stop): a
   non-finite loss or norm stops the run before anything is written;
2. `MetricsLogger` (same schedule): train metrics with step time, tokens/s
   and MFU to `metrics.jsonl`/TensorBoard, and the progress bar;
3. `HeldoutEvaluation` (every `eval_every`, the last step): the held-out loss;
4. `TaskEvaluationHook` (`PeriodicEvaluator.every`, the last step): the
   task's metrics and the best step's export;
5. `Checkpointing` (every `checkpoint_every`, the last step, on stop);
6. at the end of a finished run, `ExportParams` (a self-contained export:
   parameters, vocabularies, MODEL_CARD.md) then `PreviewSamples`.

Hooks 1, 2 and 5 read the step's metrics through `StepContext.host_metrics`,
so they share one device fetch per step.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
from jax.experimental import multihost_utils

from llmos_jax.checkpoints.checkpointer import Checkpointer
from llmos_jax.data.vocabulary_files import TaskVocabularies
from llmos_jax.inference.decoding_engine import DecodingEngine
from llmos_jax.inference.preview_sampler import sample_tokens
from llmos_jax.monitoring.flops import mfu
from llmos_jax.monitoring.metrics_writer import MetricsWriter
from llmos_jax.monitoring.progress import TrainProgress
from llmos_jax.objectives import Objective
from llmos_jax.objectives.model_building import ModelSpec
from llmos_jax.partitioning import Layout
from llmos_jax.training.hooks import Schedule, StepContext
from llmos_jax.training.periodic_eval import EvalBatches, TaskEvaluation, heldout_metrics
from llmos_jax.training.run_guards import finite_or_raise
from llmos_jax.training.self_contained_export import write_export


class DivergenceGuard:
    """Raises `TrainingDiverged` at a non-finite loss, gradient or parameter norm."""

    def __init__(self, schedule: Schedule, checkpointer: Checkpointer):
        self.schedule, self._checkpointer = schedule, checkpointer

    def on_step(self, context: StepContext) -> None:
        finite_or_raise(context.step, context.host_metrics(), self._checkpointer)

    def on_end(self, context: StepContext) -> None:
        pass


class MetricsLogger:
    """Writes the train metrics with throughput (and MFU), and moves the progress bar.

    Attributes:
      losses: The loss at each logged step.
    """

    def __init__(self, schedule: Schedule, writer: MetricsWriter, progress: TrainProgress, *,
                 flops_per_token: float | None, peak_flops: float):
        self.schedule = schedule
        self._writer, self._progress = writer, progress
        self._flops_per_token, self._peak = flops_per_token, peak_flops
        self.losses: dict[int, float] = {}

    def on_step(self, context: StepContext) -> None:
        host = context.host_metrics()
        step_time, tokens_per_second = context.throughput.report()
        host.update(step_time=step_time, tokens_per_second=tokens_per_second)
        if self._flops_per_token is not None:
            host["mfu"] = mfu(flops_per_token=self._flops_per_token,
                              tokens_per_second=tokens_per_second,
                              peak_flops_per_second=self._peak)
        self._writer.write_scalars(context.step, host)
        self.losses[context.step] = host["loss"]
        self._progress.update(context.step, loss=host["loss"],
                              tokens_per_second=tokens_per_second)
        context.throughput.restart()

    def on_end(self, context: StepContext) -> None:
        pass


class HeldoutEvaluation:
    """The objective's loss and metrics on `train.eval_split`, to the `eval` run.

    Attributes:
      metrics: The latest evaluation's metrics (empty before the first).
    """

    def __init__(self, schedule: Schedule, eval_step, eval_data: EvalBatches,
                 num_batches: int | None, objective: Objective, layout: Layout,
                 writer: MetricsWriter):
        self.schedule = schedule
        self._eval_step, self._data, self._num_batches = eval_step, eval_data, num_batches
        self._objective, self._layout, self._writer = objective, layout, writer
        self.metrics: dict[str, float] = {}

    @property
    def loss(self) -> float | None:
        return self.metrics.get("loss")

    def on_step(self, context: StepContext) -> None:
        self.metrics = heldout_metrics(self._eval_step, context.state.params, self._data,
                                       self._num_batches, self._objective, self._layout)
        self._writer.write_scalars(context.step, self.metrics, split="eval")
        context.throughput.exclude_until_now()

    def on_end(self, context: StepContext) -> None:
        pass


class TaskEvaluationHook:
    """Runs a `TaskEvaluation` (`train.evaluator`) on its own interval."""

    def __init__(self, evaluation: TaskEvaluation, meta: Mapping[str, Any]):
        self.schedule = Schedule(every=evaluation.every)
        self.evaluation, self._meta = evaluation, meta

    def on_step(self, context: StepContext) -> None:
        self.evaluation.run(context.step, context.state.params, self._meta)
        context.throughput.exclude_until_now()

    def on_end(self, context: StepContext) -> None:
        pass


class Checkpointing:
    """Saves the state, with the data position, unless it has diverged.

    A save that fails (disk full, permission lost) raises `CheckpointSaveFailed`
    here, at the next save or at the end, which stops the run; the earlier
    checkpoints are kept.
    """

    def __init__(self, schedule: Schedule, checkpointer: Checkpointer, meta: Mapping[str, Any]):
        self.schedule, self._checkpointer, self._meta = schedule, checkpointer, meta

    def on_step(self, context: StepContext) -> None:
        finite_or_raise(context.step, context.host_metrics(), self._checkpointer)
        self._checkpointer.save(context.step, context.state,
                                {**self._meta, "data_position": context.step})
        context.throughput.exclude_until_now()  # a save is not training time

    def on_end(self, context: StepContext) -> None:
        # The last save must be on disk and checksummed (or its failure reported)
        # before the run exports or says it finished.
        self._checkpointer.wait()


class ExportParams:
    """Writes the finished run's parameters to `model_dir/export` (every host its shards).

    The export is self-contained (`self_contained_export.write_export`): with
    `vocabularies` it carries them, and `llmos serve` loads it with no gin file.

    Args:
      directory: The export folder.
      meta: The run's metadata (`run_metadata.describe_run`); `step` is added.
      vocabularies: The task's vocabularies (None: the export carries none).
      metrics: Called at export time for the card's metrics (name -> value).
      params_for_export: Turns the trained parameters into the exported ones
        (a LoRA run merges its adapters into the base).
    """

    schedule = Schedule(at_last=False)

    def __init__(self, directory: pathlib.Path, meta: Mapping[str, Any], *,
                 vocabularies: TaskVocabularies | None = None,
                 metrics: Callable[[], Mapping[str, float]] | None = None,
                 params_for_export: Callable[[Any], Any] | None = None):
        self._directory, self._meta = directory, meta
        self._vocabularies, self._metrics = vocabularies, metrics
        self._params_for_export = params_for_export or (lambda params: params)

    def on_step(self, context: StepContext) -> None:
        pass

    def on_end(self, context: StepContext) -> None:
        if context.finished:
            write_export(self._directory, self._params_for_export(context.state.params),
                         {**self._meta, "step": context.step}, vocabularies=self._vocabularies,
                         metrics=self._metrics() if self._metrics else None)


class PreviewSamples:
    """Samples text from a finished decoder LM, prints it and writes it to the `text` run.

    Attributes:
      samples: The continuation of each prompt (empty until the run finishes).
    """

    schedule = Schedule(at_last=False)

    def __init__(self, spec: ModelSpec, vocabulary, writer: MetricsWriter, *, max_len: int,
                 prompts: Sequence[str], new_tokens: int, temperature: float,
                 top_k: int | None, seed: int):
        self._spec, self._vocabulary, self._writer, self._max_len = spec, vocabulary, writer, max_len
        self._prompts, self._new_tokens = tuple(prompts), new_tokens
        self._temperature, self._top_k, self._seed = temperature, top_k, seed
        self.samples: list[str] = []

    def on_step(self, context: StepContext) -> None:
        pass

    def on_end(self, context: StepContext) -> None:
        if not context.finished:
            return
        self.samples = self._sample(context.state.params)
        if jax.process_index() != 0:  # Every host samples (the params span them); one prints.
            return
        print(f"\n--- samples after {context.step} steps (temperature {self._temperature}, "
              f"top-k {self._top_k}) ---")
        for prompt, text in zip(self._prompts, self.samples):
            print(f"{prompt}{text}\n---")
        for prompt, text in zip(self._prompts, self.samples):
            self._writer.write_text(context.step, "samples", prompt + text)

    def _sample(self, params) -> list[str]:
        if jax.process_count() > 1:
            host_params = multihost_utils.process_allgather(params, tiled=True)
        else:
            host_params = jax.device_get(params)
        engine = DecodingEngine(self._spec.merge(host_params), host_params)  # one for all prompts
        vocabulary, texts = self._vocabulary, []
        for index, prompt in enumerate(self._prompts):
            ids = sample_tokens(self._spec.graphdef, host_params, vocabulary.encode(prompt),
                                max_len=self._max_len, max_new_tokens=self._new_tokens,
                                temperature=self._temperature, top_k=self._top_k,
                                seed=self._seed + index, eos_id=vocabulary.eos_id,
                                engine=engine)
            texts.append(vocabulary.decode([i for i in ids if i != vocabulary.eos_id]))
        return texts
