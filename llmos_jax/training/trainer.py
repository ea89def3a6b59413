"""`train`: the training loop behind `llmos train`.

The loop is deliberately plain: every setting comes from one `TrainConfig`
(bound in gin as `train.NAME`), everything the run uses (model config,
objective, layout, optimizer, data) is built from it, and each concern lives
in its own module. One loop trains every model family: the objective
(`objectives`) builds the model and says what a batch's loss and metrics are
(decoder LM by default; MLM+NSP, T5, sequence and token classification).
Batches are a pure function of (seed, step), so resuming only needs the step
saved with the checkpoint; the saved metadata records that data position.
A fresh run can start from pretrained weights (`warm_start`). A resume
starts from the newest checkpoint that restores and verifies: damaged newer
ones are skipped with a warning and moved aside (`checkpoints.fallback`), and
the `metrics.jsonl` records of the steps about to be redone are marked
superseded.

Between steps the loop only calls hooks (`hooks`): the divergence guard,
metrics, held-out and task evaluation (`periodic_eval`) and checkpoints are
`standard_hooks`, each on its own schedule; `train.hooks` and
`train(hooks=...)` add more (an experiment tracker, say).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import pathlib
import time
from typing import Any, Iterator, Mapping, Protocol, Sequence

import gin
import jax
import numpy as np

from llmos_jax import runtime
from llmos_jax.errors import UserError
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.encoder import EncoderConfig
from llmos_jax.models.encoder_decoder import EncoderDecoderConfig
from llmos_jax.models.families import family_for_config
from llmos_jax.monitoring.metrics_history import mark_superseded
from llmos_jax.monitoring.metrics_writer import MetricsWriter
from llmos_jax.monitoring.peak_flops import peak_flops_per_device
from llmos_jax.monitoring.progress import TrainProgress
from llmos_jax.partitioning import Layout, MeshConfig
from llmos_jax.training import distillation_teacher  # noqa: F401 (gin: @distillation)
from llmos_jax.training import run_metadata, warm_start
from llmos_jax.checkpoints.checkpointer import Checkpointer, SaveStageCallback, check_writable
from llmos_jax.checkpoints.fallback import restore_newest
from llmos_jax.objectives.model_building import ModelSpec, build_model_spec, resolve_objective
from llmos_jax.objectives import (BertPretraining, CausalLm, Objective, Seq2Seq,
                                           SequenceClassification, TokenClassification,
                                           check_batch_features)
from llmos_jax.training.hooks import Schedule, StepContext, Throughput, TrainHook, run_due
from llmos_jax.training.optimizers import current_learning_rate
from llmos_jax.training.periodic_eval import BestExport, PeriodicEvaluator, TaskEvaluation
from llmos_jax.training.run_guards import StopSignal, TrainingDiverged  # noqa: F401
from llmos_jax.training.run_monitoring import RunMonitoring
from llmos_jax.training.self_contained_export import task_vocabularies_for_export
from llmos_jax.training.standard_hooks import (Checkpointing, DivergenceGuard, ExportParams,
                                               HeldoutEvaluation, MetricsLogger, PreviewSamples,
                                               TaskEvaluationHook)
from llmos_jax.training.spike_statistics import GuardedTrainStep
from llmos_jax.training.train_config import TrainConfig
from llmos_jax.training.lora_training import SaveAdapters, lora_model_spec, merged_params
from llmos_jax.compression.adapters import adapters_only, trained_mask
from llmos_jax.training.train_state import (TrainState, abstract_train_state, init_train_state,
                                            state_shardings)
from llmos_jax.training.train_step import (StepConfig, jit_eval_step, jit_train_step,
                                           make_eval_step, make_train_step)

# Configurables that live in gin-free layers are registered here (`TrainConfig`,
# bound as `train`, registers itself in `train_config`).
gin.external_configurable(TransformerConfig)
gin.external_configurable(EncoderConfig)
gin.external_configurable(EncoderDecoderConfig)
gin.external_configurable(MeshConfig)
for _objective in (CausalLm, Seq2Seq, BertPretraining, SequenceClassification,
                   TokenClassification):
    gin.external_configurable(_objective)
gin.external_configurable(warm_start.InitFrom)
gin.external_configurable(warm_start.hf_model_config)
gin.external_configurable(PeriodicEvaluator)
# Under the name `llmos eval`/`llmos infer` bindings use: `DecodeConfig.max_new_tokens = 64`.
gin.external_configurable(DecodeConfig, module="llmos_jax.inference")

log = logging.getLogger("llmos_jax.train")


class Batches(Protocol):
    """Where the loop's batches come from (`LMBatches`, `ExampleBatches`).

    `batch_at(step)` is this host's rows of the global batch of `step`, a pure
    function of (seed, step); `eval_batches(n)` walks a split once.
    """

    vocabulary: Any

    def batch_at(self, step: int) -> Mapping[str, np.ndarray]: ...

    def eval_batches(self, num_batches: int | None = None) -> Iterator[Mapping[str, np.ndarray]]: ...


@dataclasses.dataclass
class TrainResult:
    """What a finished (or interrupted) run reports back."""

    last_step: int
    train_losses: dict[int, float]
    eval_loss: float | None
    samples: list[str]
    wall_seconds: float
    interrupted: bool = False
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    warm_start_report: warm_start.WarmStartReport | None = None
    task_metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    best: BestExport | None = None


def train(*, model_dir: str, config: TrainConfig | None = None,
          hooks: Sequence[TrainHook] = (),
          on_save_stage: SaveStageCallback | None = None) -> TrainResult:
    """Trains a model; resumes automatically from the newest intact checkpoint in `model_dir`.

    Args:
      model_dir: Checkpoints, TensorBoard events, `metrics.jsonl` and
        `config.gin` go here. Set by `--model_dir`.
      config: The run's settings; default `TrainConfig.from_gin()`, the
        `train.NAME` bindings of the parsed gin files.
      hooks: Run after the standard hooks and `config.hooks`, in this order.
      on_save_stage: Called with (stage, step) at each stage of every checkpoint
        save (`checkpoints.checkpointer.SAVE_STAGES`): where tests pause or kill
        a run to prove that no moment of a save loses a checkpoint.

    Raises:
      UserError: a setting that does not fit the data, the devices or a
        checkpoint already in `model_dir` (before training starts);
        `TrainingDiverged` when the loss or a norm stops being finite;
        `CheckpointSaveFailed` when a checkpoint cannot be written (disk full,
        permission lost): the earlier checkpoints are kept.
    """
    started = time.time()
    # Before any XLA computation: makes malloc recycle XLA:CPU's per-step buffers.
    runtime.configure_host_runtime()
    config = TrainConfig.from_gin() if config is None else config
    if not config.task_name:
        raise UserError("train.task_name is not bound; bind the seqio Task to train on, e.g. "
                        "train.task_name = @register_stdlib_task().")
    objective = resolve_objective(config.objective)
    model_path = check_writable(model_dir)
    layout = Layout.build(config.mesh_config, config.axis_rules)
    layout.check_global_batch_size(config.global_batch_size, name="train.global_batch_size")
    # Each microbatch must itself split evenly over the data-parallel devices.
    layout.check_global_batch_size(config.global_batch_size // config.microbatches,
                                   name="train.global_batch_size / train.microbatches")

    train_data, eval_data = _open_data(config)
    first_batch = train_data.batch_at(0)
    check_batch_features(objective, first_batch.keys())
    batch_ranks = {key: value.ndim for key, value in first_batch.items()}

    spec = (build_model_spec(config.model_config, objective, layout, config.seed)
            if config.lora is None else lora_model_spec(
                config.model_config, objective, layout, config.lora, config.seed))
    # Carried by model_dir/export and model_dir/best, so they serve with no gin file.
    vocabularies = task_vocabularies_for_export(
        config.task_name, train_data.vocabulary,
        from_task=getattr(train_data, "reads_seqio", True))
    params_for_export = None if config.lora is None else (
        lambda params: merged_params(spec, params))
    task_eval = None if config.evaluator is None else TaskEvaluation(
        config.evaluator, objective=objective, spec=spec, layout=layout,
        task_name=config.task_name, split=config.eval_split, default_every=config.eval_every,
        sequence_length=config.sequence_length, model_dir=model_path,
        write=jax.process_index() == 0, vocabularies=vocabularies,
        params_for_export=params_for_export)
    tx = config.optimizer_factory()
    trained = None
    if config.lora is not None:  # the base is frozen and gets no optimizer state
        tx = adapters_only(tx, config.lora.also_train)
        trained = functools.partial(trained_mask, also_train=config.lora.also_train)
    shardings = state_shardings(spec, tx, layout)

    checkpointer = Checkpointer(model_path, save_every=config.checkpoint_every,
                                keep=config.keep_checkpoints,
                                async_save=config.async_checkpointing,
                                on_save_stage=on_save_stage)
    meta = run_metadata.describe_run(
        config.model_config, train_data.vocabulary, task_name=config.task_name,
        seed=config.seed, global_batch_size=config.global_batch_size,
        sequence_length=config.sequence_length, pack=config.pack)
    meta["objective"] = objective.describe()
    state, warm_report = _restore_or_init(config, checkpointer, meta, spec, tx, shardings,
                                          model_path)
    start_step = int(jax.device_get(state.step))
    if jax.process_index() == 0:
        # Records of steps after the one resumed from are redone: mark the old ones.
        mark_superseded(model_path, after_step=start_step)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(spec.abstract_params))
    log.info("model: %s, %.2fM parameters; mesh %s over %d device(s); batch %d x %s tokens; "
             "steps %d -> %d", type(objective).__name__, num_params / 1e6,
             dict(layout.mesh.shape), layout.mesh.size, config.global_batch_size,
             config.sequence_length, start_step, config.num_steps)
    if trained is not None:
        num_trained = sum(leaf.size for leaf, train in zip(
            jax.tree.leaves(spec.abstract_params), jax.tree.leaves(trained(spec.abstract_params)))
            if train)
        log.info("LoRA: %d trainable parameters (%.2f%% of %d); the rest is frozen",
                 num_trained, 100 * num_trained / num_params, num_params)

    step_config = StepConfig(microbatches=config.microbatches, z_loss=config.z_loss,
                             dropout_seed=config.seed,
                             use_dropout=(config.model_config.dropout_rate > 0 or bool(
                                 config.lora and config.lora.dropout > 0)))
    step_fn = make_train_step(spec, tx, current_learning_rate, step_config, layout, objective,
                              trained=trained)
    spike_rules = config.alerting.spike_rules() if config.alerting else ()
    train_step = (GuardedTrainStep(step_fn, spike_rules, shardings,
                                   layout.batch_shardings(batch_ranks), layout)
                  if spike_rules else jit_train_step(step_fn, shardings, batch_ranks, layout))
    eval_step = jit_eval_step(make_eval_step(spec, objective), shardings.params, batch_ranks,
                              layout)

    is_chief = jax.process_index() == 0
    if is_chief:  # Every host parsed the same gin; one writes it.
        (model_path / "config.gin").write_text(gin.operative_config_str())
    flops_per_token, peak = _flops_per_token(objective, config.model_config,
                                             config.longest_sequence)
    end_step = (config.num_steps if config.stop_after_steps is None
                else min(config.num_steps, start_step + config.stop_after_steps))

    def fetch(step: int):
        return layout.global_batch(train_data.batch_at(step))

    with contextlib.ExitStack() as cleanup:
        # Closed in reverse on any exit, including divergence and errors.
        cleanup.callback(checkpointer.close)
        writer = cleanup.enter_context(MetricsWriter(model_path, enabled=is_chief))
        prefetch = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        cleanup.callback(prefetch.shutdown, wait=False, cancel_futures=True)
        stop = cleanup.enter_context(StopSignal())
        progress = cleanup.enter_context(
            TrainProgress(config.num_steps, start_step,
                          enabled=config.progress_bar and is_chief))

        # The standard hooks, in the order they run at a step (see `standard_hooks`).
        logged = Schedule(every=config.log_every, on_stop=True)
        logger = MetricsLogger(logged, writer, progress, flops_per_token=flops_per_token,
                               peak_flops=peak)
        heldout = None if eval_data is None else HeldoutEvaluation(
            Schedule(every=config.eval_every), eval_step, eval_data, config.eval_batches,
            objective, layout, writer)
        task_hook = None if task_eval is None else TaskEvaluationHook(task_eval, meta)
        sampler = (PreviewSamples(spec, train_data.vocabulary, writer,
                                  max_len=config.model_config.max_len,
                                  prompts=config.sample_prompts,
                                  new_tokens=config.sample_new_tokens,
                                  temperature=config.sample_temperature,
                                  top_k=config.sample_top_k, seed=config.seed)
                   if objective.generates_text and config.sample_prompts
                   and config.sample_new_tokens > 0 else None)
        monitoring = cleanup.enter_context(RunMonitoring(
            config.alerting, metrics_port=config.metrics_port if is_chief else None,
            metrics_host=config.metrics_host,
            model_dir=model_path if is_chief else None, writer=writer, logged=logged,
            request_stop=lambda: stop.request("an alert rule stopped the run"),
            eval_metrics=lambda: _export_metrics(heldout, task_eval),
            flops_per_token=flops_per_token, peak_flops=peak))
        standard = [
            *monitoring.first_hooks, DivergenceGuard(logged, checkpointer), logger, heldout,
            task_hook,
            Checkpointing(Schedule(every=config.checkpoint_every, on_stop=True), checkpointer,
                          meta),
            ExportParams(model_path / "export", meta, vocabularies=vocabularies,
                         metrics=lambda: _export_metrics(heldout, task_eval),
                         params_for_export=params_for_export)
            if config.export else None,
            SaveAdapters(model_path / "adapters", config.lora) if config.lora else None,
            sampler, *monitoring.last_hooks]
        all_hooks = tuple(hook for hook in standard if hook is not None) + (
            *config.hooks, *hooks)

        compiles = None
        if layout.mesh.devices.flat[0].platform == "cpu":
            compiles = runtime.CompileWatch()
            cleanup.callback(compiles.close)
        context = _loop(train_step, state, fetch, start_step, end_step, all_hooks, stop,
                        Throughput(config.tokens_per_step), prefetch, compiles)
        context.finished = context.step >= config.num_steps and not context.stopping
        for hook in all_hooks:
            hook.on_end(context)

    return TrainResult(last_step=context.step, train_losses=logger.losses,
                       eval_loss=heldout.loss if heldout else None,
                       samples=sampler.samples if sampler else [],
                       wall_seconds=time.time() - started,
                       interrupted=not context.finished,
                       eval_metrics=heldout.metrics if heldout else {},
                       warm_start_report=warm_report,
                       task_metrics=task_eval.results if task_eval else {},
                       best=task_eval.best if task_eval else None)


def _export_metrics(heldout: HeldoutEvaluation | None,
                    task_eval: TaskEvaluation | None) -> dict[str, float]:
    """The latest held-out and task metrics, for the export's model card."""
    metrics = {f"eval/{name}": value
               for name, value in (heldout.metrics if heldout else {}).items()}
    for task, values in (task_eval.results if task_eval else {}).items():
        metrics.update({f"{task}/{name}": value for name, value in values.items()})
    return metrics


def _loop(train_step, state: TrainState, fetch, start_step: int, end_step: int,
          hooks: tuple[TrainHook, ...], stop: StopSignal, throughput: Throughput,
          prefetch: concurrent.futures.Executor,
          compiles: runtime.CompileWatch | None = None) -> StepContext:
    """Steps from `start_step` to `end_step`, calling the due hooks after each step.

    The next batch is read and placed on a background thread while the
    device runs the current step. After a step or hook that compiled (the
    first step, a first evaluation), the compiler's leftover heap fragments
    are retired so that the steps still to come do not pay for them
    (`compiles`, on CPU; see `runtime.retire_heap_fragments`). Returns the
    last step's context (`stopping` set when a SIGTERM ended the loop early).
    """
    context = StepContext(step=start_step, state=state, metrics=None, last=True,
                          stopping=False, throughput=throughput)
    next_batch = prefetch.submit(fetch, start_step) if start_step < end_step else None
    throughput.restart()
    step = start_step
    while step < end_step:
        batch = next_batch.result()
        if step + 1 < end_step:
            next_batch = prefetch.submit(fetch, step + 1)
        state, metrics = train_step(state, batch)
        step += 1
        throughput.count_step()
        context = StepContext(step=step, state=state, metrics=metrics, last=step == end_step,
                              stopping=stop.requested, throughput=throughput)
        run_due(hooks, context)
        if (compiles is not None and compiles.compiled_since_last() and not context.last
                and not context.stopping):
            runtime.retire_heap_fragments()
        if context.stopping:
            log.warning("%s: saved step %d, exiting", stop.reason, step)
            break
    return context


def _open_data(config: TrainConfig) -> tuple[Batches, Batches | None]:
    """The train batches and, when evaluating, the held-out ones; checks the vocabulary fits."""
    def open_split(split: str) -> Batches:
        return config.batches(config.task_name, split, config.sequence_length,
                              config.global_batch_size, seed=config.seed, pack=config.pack)

    train_data = open_split("train")
    eval_data = open_split(config.eval_split) if config.eval_every else None
    vocabulary, model_config = train_data.vocabulary, config.model_config
    if vocabulary.vocab_size > model_config.vocab_size:
        name = type(model_config).__name__
        raise UserError(
            f"{name}.vocab_size={model_config.vocab_size} is smaller than the task vocabulary "
            f"({vocabulary.vocab_size} ids); set {name}.vocab_size >= {vocabulary.vocab_size}.")
    return train_data, eval_data


def _restore_or_init(config: TrainConfig, checkpointer: Checkpointer, meta: dict[str, Any],
                     spec: ModelSpec, tx, shardings: TrainState, model_path: pathlib.Path):
    """The newest checkpoint that restores (checked compatible), else a fresh state.

    Damaged newer steps are skipped and moved aside (`checkpoints.fallback`).
    """
    restored = restore_newest(
        checkpointer, abstract_train_state(spec, tx, shardings),
        check_meta=lambda saved: run_metadata.check_compatible(
            saved, meta, checkpoint_dir=checkpointer.directory),
        move_damaged=True)
    if restored is not None:
        log.info("resumed from step %d in %s", restored.step, checkpointer.directory)
        return restored.state, None
    state = init_train_state(spec, tx, shardings)
    if config.init_from is None:
        return state, None
    return _warm_start(state, config.init_from, tx, shardings, config.model_config, model_path)


def _warm_start(state: TrainState, init_from: warm_start.InitFrom, tx, shardings: TrainState,
                model_config: TransformerConfig, model_path: pathlib.Path):
    """The fresh state with pretrained parameters loaded and the optimizer state rebuilt."""
    params, report = warm_start.warm_start_params(init_from, state.params, shardings.params,
                                                  model_config)
    if jax.process_index() == 0:
        warm_start.write_report(report, model_path)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return TrainState(step=state.step, params=params, opt_state=opt_state), report


def _flops_per_token(objective: Objective, config: TransformerConfig,
                     sequence_length: int) -> tuple[float | None, float]:
    """Model FLOPs per token (the model family's formula) and the run's peak.

    Families without a formula (today the encoder and encoder-decoder ones)
    log tokens/s without MFU.
    """
    family = family_for_config(config)
    flops = family.flops_per_token(config, sequence_length)
    if flops is None:
        log.info("MFU is reported for model families with a FLOPs formula only; %s runs of "
                 "family %r log tokens/s without it", type(objective).__name__, family.name)
        return None, 0.0
    peak, peak_source = _run_peak_flops(config.compute_dtype)
    log.info("MFU denominator: %.3g FLOP/s (%s)", peak, peak_source)
    return flops, peak


def _run_peak_flops(dtype) -> tuple[float, str]:
    """Peak FLOP/s of the whole run: simulated CPU devices share one host's cores."""
    per_device, source = peak_flops_per_device(dtype)
    if jax.default_backend() == "cpu":
        return per_device, source + " (all CPU devices share the host)"
    return per_device * jax.device_count(), f"{source} x {jax.device_count()} devices"
