"""`train`: the gin-configured training loop behind `llmos train`.

The loop is deliberately plain: everything it uses (model config, objective,
mesh, rules, optimizer, data) is injected by gin, and each concern lives in
its own module. One loop trains every model family: the objective
(`objectives`) builds the model and says what a batch's loss and metrics are
(decoder LM by default; MLM+NSP, T5, sequence and token classification).
Batches are a pure function of (seed, step), so resuming only needs the step
saved with the checkpoint; the saved metadata records that data position.
A fresh run can start from pretrained weights (`warm_start`). Besides the
held-out loss, `train.evaluator` runs the task's own metrics periodically and
keeps the best step's weights (`periodic_eval`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import gin
import jax
import numpy as np
import optax

from llmos_jax import runtime
from llmos_jax.data.lm_batches import LMBatches
from llmos_jax.errors import UserError
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.preview_sampler import sample_tokens
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.encoder import EncoderConfig
from llmos_jax.models.encoder_decoder import EncoderDecoderConfig
from llmos_jax.models.families import family_for_config
from llmos_jax.monitoring.flops import mfu
from llmos_jax.monitoring.metrics_writer import MetricsWriter
from llmos_jax.monitoring.peak_flops import peak_flops_per_device
from llmos_jax.monitoring.progress import TrainProgress
from llmos_jax.partitioning import (DEFAULT_RULES, MeshConfig, build_mesh,
                                    check_global_batch_size, host_local_to_global,
                                    rules_from_mapping)
from llmos_jax.training import run_metadata, warm_start
from llmos_jax.checkpoints.checkpointer import Checkpointer, check_writable, export_params
from llmos_jax.objectives.model_building import build_model_spec, resolve_objective
from llmos_jax.objectives import (BertPretraining, CausalLm, Objective, Seq2Seq,
                                           SequenceClassification, TokenClassification,
                                           check_batch_features)
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.periodic_eval import (BestExport, PeriodicEvaluator, TaskEvaluation,
                                              heldout_metrics)
from llmos_jax.training.run_guards import (StopSignal, TrainingDiverged,  # noqa: F401
                                           finite_or_raise)
from llmos_jax.training.train_state import (TrainState, abstract_train_state, init_train_state,
                                            state_shardings)
from llmos_jax.training.train_step import (StepConfig, jit_eval_step, jit_train_step,
                                           make_eval_step, make_train_step)

# Configurables that live in gin-free layers are registered here.
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


@gin.configurable(denylist=["model_dir"])
def train(
    *,
    model_dir: str,
    model_config: TransformerConfig = gin.REQUIRED,
    task_name: str = gin.REQUIRED,
    objective: Objective | None = None,
    batches: Callable[..., Batches] = LMBatches,
    init_from: warm_start.InitFrom | None = None,
    sequence_length: int | Mapping[str, int] = 128,
    global_batch_size: int = 16,
    num_steps: int = 1000,
    microbatches: int = 1,
    z_loss: float = 0.0,
    seed: int = 0,
    pack: bool = True,
    mesh_config: MeshConfig = MeshConfig(),
    axis_rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
    optimizer_factory: Callable[[], optax.GradientTransformation] = make_optimizer,
    log_every: int = 10,
    eval_every: int = 100,
    eval_batches: int | None = 8,
    eval_split: str = "validation",
    evaluator: PeriodicEvaluator | None = None,
    checkpoint_every: int = 200,
    keep_checkpoints: int = 3,
    async_checkpointing: bool = True,
    export: bool = True,
    sample_prompts: Sequence[str] = ("def ",),
    sample_new_tokens: int = 200,
    sample_temperature: float = 0.8,
    sample_top_k: int | None = 40,
    stop_after_steps: int | None = None,
    progress_bar: bool = True,
) -> TrainResult:
    """Trains a model; resumes automatically from the latest checkpoint in `model_dir`.

    Args:
      model_dir: Checkpoints, TensorBoard events, `metrics.jsonl` and
        `config.gin` go here. Set by `--model_dir`.
      model_config: The architecture (`TransformerConfig`, `EncoderConfig`,
        `EncoderDecoderConfig`, or `@hf_model_config()` for a HF directory's).
      task_name: A registered seqio Task (bind `@register_stdlib_task()` etc.).
      objective: What to train: `CausalLm()` (the default, a decoder LM),
        `Seq2Seq()`, `BertPretraining()`, `SequenceClassification(...)`,
        `TokenClassification(...)`. It builds the model from `model_config`.
      batches: The batch source, called as `batches(task_name, split,
        sequence_length, global_batch_size, seed=, pack=)`: `LMBatches` (token
        streams, via a seqio feature converter) or `ExampleBatches` (tasks
        whose examples are feature dicts).
      init_from: Start a fresh run from pretrained weights (`InitFrom`); ignored
        when `model_dir` already has a checkpoint.
      sequence_length: Tokens per row, or a length per feature.
      global_batch_size: Rows per step over all devices and hosts.
      num_steps: Total optimizer steps.
      microbatches: Gradient-accumulation steps per global batch.
      z_loss: PaLM z-loss coefficient.
      seed: Seeds initialisation, data order and dropout.
      pack: Pack short documents into rows (with segment masking).
      mesh_config: Mesh axis sizes.
      axis_rules: Logical-to-mesh rules (a tuple of pairs, or a dict).
      optimizer_factory: Builds the optax transformation (`make_optimizer`).
      log_every: Steps between metric writes (each costs one host sync).
      eval_every: Steps between held-out evaluations (0 disables).
      eval_batches: Global batches per evaluation (None: the whole split).
      eval_split: The held-out split of `task_name`.
      evaluator: Also run the task's metric functions periodically, and keep
        the best step's weights (`@PeriodicEvaluator()`); None: off.
      checkpoint_every: Steps between checkpoints.
      keep_checkpoints: How many checkpoints to keep.
      async_checkpointing: Write checkpoints in the background.
      export: Write params-only weights to `model_dir/export` at the end.
      sample_prompts: Prompts for the text samples printed at the end
        (decoder LMs only).
      sample_new_tokens: Length of each sample.
      sample_temperature: Sampling temperature (0 is greedy).
      sample_top_k: Sample among the k most likely tokens (None: all).
      stop_after_steps: Stop (with a checkpoint) after this many steps of this
        invocation, as if preempted; for tests and time-boxed jobs.
      progress_bar: Show a progress bar on stderr.
    """
    started = time.time()
    # Before any XLA computation: makes malloc recycle XLA:CPU's per-step buffers.
    runtime.configure_host_runtime()
    objective = resolve_objective(objective)
    model_path = check_writable(model_dir)
    rules = rules_from_mapping(axis_rules)
    mesh = build_mesh(mesh_config)
    check_global_batch_size(global_batch_size, mesh, name="train.global_batch_size")
    if microbatches < 1 or global_batch_size % microbatches:
        raise UserError(f"train.microbatches={microbatches} must divide "
                        f"train.global_batch_size={global_batch_size}.")
    # Each microbatch must itself split evenly over the data-parallel devices.
    check_global_batch_size(global_batch_size // microbatches, mesh,
                            name="train.global_batch_size / train.microbatches")
    longest = (max(sequence_length.values()) if isinstance(sequence_length, Mapping)
               else sequence_length)
    if model_config.position_embedding == "learned" and longest > model_config.max_len:
        raise UserError(
            f"train.sequence_length={sequence_length} exceeds {type(model_config).__name__}."
            f"max_len={model_config.max_len}; raise max_len or shorten the sequence.")

    train_data = batches(task_name, "train", sequence_length, global_batch_size, seed=seed,
                         pack=pack)
    eval_data = (batches(task_name, eval_split, sequence_length, global_batch_size,
                         seed=seed, pack=pack) if eval_every else None)
    vocabulary = train_data.vocabulary
    if vocabulary.vocab_size > model_config.vocab_size:
        raise UserError(
            f"{type(model_config).__name__}.vocab_size={model_config.vocab_size} is smaller than "
            f"the task vocabulary ({vocabulary.vocab_size} ids); set "
            f"{type(model_config).__name__}.vocab_size >= {vocabulary.vocab_size}.")
    first_batch = train_data.batch_at(0)
    check_batch_features(objective, first_batch.keys())
    batch_ranks = {key: value.ndim for key, value in first_batch.items()}

    spec = build_model_spec(model_config, objective, mesh, rules, seed)
    task_eval = None if evaluator is None else TaskEvaluation(
        evaluator, objective=objective, spec=spec, mesh=mesh, task_name=task_name,
        split=eval_split, default_every=eval_every, sequence_length=sequence_length,
        model_dir=model_path, write=jax.process_index() == 0)
    tx = optimizer_factory()
    shardings = state_shardings(spec, tx, mesh, rules)

    checkpointer = Checkpointer(model_path, save_every=checkpoint_every, keep=keep_checkpoints,
                                async_save=async_checkpointing)
    meta = run_metadata.describe_run(model_config, vocabulary, task_name=task_name,
                                     seed=seed, global_batch_size=global_batch_size,
                                     sequence_length=sequence_length, pack=pack)
    meta["objective"] = objective.describe()
    latest = checkpointer.latest_step()
    warm_report = None
    if latest is not None:
        run_metadata.check_compatible(checkpointer.read_meta(latest), meta,
                                      checkpoint_dir=checkpointer.directory)
        state = checkpointer.restore(latest, abstract_train_state(spec, tx, shardings))
        log.info("resumed from step %d in %s", latest, checkpointer.directory)
    else:
        state = init_train_state(spec, tx, shardings)
        if init_from is not None:
            state, warm_report = _warm_start(state, init_from, tx, shardings, model_config,
                                             model_path)
    start_step = int(jax.device_get(state.step))
    num_params = sum(leaf.size for leaf in jax.tree.leaves(spec.abstract_params))
    log.info("model: %s, %.2fM parameters; mesh %s over %d device(s); batch %d x %s tokens; "
             "steps %d -> %d", type(objective).__name__, num_params / 1e6, dict(mesh.shape),
             mesh.size, global_batch_size, sequence_length, start_step, num_steps)

    step_config = StepConfig(microbatches=microbatches, z_loss=z_loss, dropout_seed=seed,
                             use_dropout=model_config.dropout_rate > 0)
    train_step = jit_train_step(
        make_train_step(spec, tx, current_learning_rate, step_config, mesh, rules, objective),
        shardings, batch_ranks, mesh, rules)
    eval_step = jit_eval_step(make_eval_step(spec, objective), shardings.params, batch_ranks,
                              mesh, rules)

    (model_path / "config.gin").write_text(gin.operative_config_str())
    tokens_per_step = global_batch_size * (sum(sequence_length.values())
                                           if isinstance(sequence_length, Mapping)
                                           else sequence_length)
    flops_per_token, peak = _flops_per_token(objective, model_config, longest)

    is_chief = jax.process_index() == 0
    train_losses: dict[int, float] = {}
    eval_loss, eval_metrics = None, {}
    interrupted = False
    end_step = num_steps if stop_after_steps is None else min(num_steps, start_step + stop_after_steps)

    def fetch(step: int):
        return host_local_to_global(train_data.batch_at(step), mesh, rules)

    with contextlib.ExitStack() as cleanup:
        # Closed in reverse on any exit, including divergence and errors.
        cleanup.callback(checkpointer.close)
        writer = cleanup.enter_context(MetricsWriter(model_path, enabled=is_chief))
        prefetch = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        cleanup.callback(prefetch.shutdown, wait=False, cancel_futures=True)
        stop = cleanup.enter_context(StopSignal())
        progress = cleanup.enter_context(
            TrainProgress(num_steps, start_step, enabled=progress_bar and is_chief))

        next_batch = prefetch.submit(fetch, start_step) if start_step < end_step else None
        interval_start, interval_steps, interval_tokens = time.perf_counter(), 0, 0.0
        step = start_step
        while step < end_step:
            batch = next_batch.result()
            if step + 1 < end_step:
                next_batch = prefetch.submit(fetch, step + 1)
            state, metrics = train_step(state, batch)
            step += 1
            interval_steps += 1
            interval_tokens += tokens_per_step
            last = step == end_step
            if step % log_every == 0 or last or stop.requested:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                finite_or_raise(step, host, checkpointer)
                elapsed = time.perf_counter() - interval_start
                tokens_per_second = interval_tokens / elapsed
                host.update(step_time=elapsed / interval_steps, tokens_per_second=tokens_per_second)
                if flops_per_token is not None:
                    host["mfu"] = mfu(flops_per_token=flops_per_token,
                                      tokens_per_second=tokens_per_second,
                                      peak_flops_per_second=peak)
                writer.write_scalars(step, host)
                train_losses[step] = host["loss"]
                progress.update(step, loss=host["loss"], tokens_per_second=tokens_per_second)
                interval_start, interval_steps, interval_tokens = time.perf_counter(), 0, 0.0
            if eval_data is not None and (step % eval_every == 0 or last):
                eval_metrics = heldout_metrics(eval_step, state.params, eval_data, eval_batches,
                                               objective, mesh, rules)
                writer.write_scalars(step, eval_metrics, split="eval")
                eval_loss = eval_metrics["loss"]
                interval_start = time.perf_counter()
            if task_eval is not None and task_eval.due(step, last):
                task_eval.run(step, state.params, meta)
                interval_start = time.perf_counter()
            if checkpointer.should_save(step) or last or stop.requested:
                finite_or_raise(step, metrics, checkpointer)
                checkpointer.save(step, state, {**meta, "data_position": step})
            if stop.requested:
                interrupted = True
                log.warning("SIGTERM received: saved step %d, exiting", step)
                break

        samples: list[str] = []
        finished = step >= num_steps and not interrupted
        if finished:
            if export:  # every host writes its shards
                export_params(model_path / "export", state.params, {**meta, "step": step})
            if is_chief and objective.generates_text and sample_prompts:
                samples = _preview_samples(spec, state.params, vocabulary, model_config,
                                           sample_prompts, sample_new_tokens, sample_temperature,
                                           sample_top_k, seed)
                _print_samples(step, sample_prompts, samples, sample_temperature, sample_top_k)
                for prompt, text in zip(sample_prompts, samples):
                    writer.write_text(step, "samples", prompt + text)
    return TrainResult(last_step=step, train_losses=train_losses, eval_loss=eval_loss,
                       samples=samples, wall_seconds=time.time() - started,
                       interrupted=interrupted or not finished, eval_metrics=eval_metrics,
                       warm_start_report=warm_report,
                       task_metrics=task_eval.results if task_eval else {},
                       best=task_eval.best if task_eval else None)


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


def _print_samples(step, prompts, samples, temperature, top_k) -> None:
    print(f"\n--- samples after {step} steps (temperature {temperature}, top-k {top_k}) ---")
    for prompt, text in zip(prompts, samples):
        print(f"{prompt}{text}\n---")


def _run_peak_flops(dtype) -> tuple[float, str]:
    """Peak FLOP/s of the whole run: simulated CPU devices share one host's cores."""
    per_device, source = peak_flops_per_device(dtype)
    if jax.default_backend() == "cpu":
        return per_device, source + " (all CPU devices share the host)"
    return per_device * jax.device_count(), f"{source} x {jax.device_count()} devices"


def _preview_samples(spec, params, vocabulary, config: TransformerConfig, prompts, new_tokens,
                     temperature, top_k, seed) -> list[str]:
    host_params = jax.device_get(params)
    texts = []
    for index, prompt in enumerate(prompts):
        ids = sample_tokens(spec.graphdef, host_params, vocabulary.encode(prompt),
                            max_len=config.max_len, max_new_tokens=new_tokens,
                            temperature=temperature, top_k=top_k, seed=seed + index,
                            eos_id=vocabulary.eos_id)
        texts.append(vocabulary.decode([i for i in ids if i != vocabulary.eos_id]))
    return texts
