"""`TrainConfig`: every setting of a training run, in one frozen, validated object.

Gin binds it under the name `train` (full name
`llmos_jax.training.trainer.train`), so the bindings every gin file and every
saved `config.gin` already holds, `train.num_steps = 20` and the rest, build
it unchanged. `TrainConfig.from_gin()` is the config the parsed gin gives;
tools that need a run's settings (`llmos eval`/`infer`, `tools/bench_train.py`,
`tools/snapshot_splits.py`) read that object rather than a signature.

A mistake is reported when the config is built, before any device is touched,
by the binding to fix (`train.microbatches=3 must divide ...`). What depends on
the devices (the global batch over the mesh) is checked by `train`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import gin
import optax

from llmos_jax.compression.lora import LoraConfig
from llmos_jax.data.lm_batches import LMBatches
from llmos_jax.errors import UserError
from llmos_jax.models.config import TransformerConfig
from llmos_jax.objectives import Objective
from llmos_jax.partitioning import DEFAULT_RULES, MeshConfig, rules_from_mapping
from llmos_jax.training.alert_rules import Alerting
from llmos_jax.training.hooks import TrainHook
from llmos_jax.training.optimizers import make_optimizer
from llmos_jax.training.periodic_eval import PeriodicEvaluator
from llmos_jax.training.warm_start import InitFrom

# The name gin knows the config by: `train.NAME = ...` in every gin file.
GIN_NAME = "train"
GIN_MODULE = "llmos_jax.training.trainer"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run's settings (bound in gin as `train.NAME`).

    Attributes:
      model_config: The architecture (`TransformerConfig`, `EncoderConfig`,
        `EncoderDecoderConfig`, or `@hf_model_config()` for a HF directory's).
        Required.
      task_name: A registered seqio Task (bind `@register_stdlib_task()` etc.).
        Required to train; None lets `llmos eval`/`infer` load a run whose gin
        files name no task (the checkpoint or `--task` names it).
      objective: What to train: `CausalLm()` (None, the default: a decoder
        LM), `Seq2Seq()`, `BertPretraining()`, `SequenceClassification(...)`,
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
      axis_rules: Logical-to-mesh rules (a tuple of pairs, or a dict); kept as
        the rule tuple.
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
      hooks: Extra `TrainHook`s subscribed to the loop after the built-in ones
        (logging, evaluation, checkpointing), e.g. to report to a tracker.
      track: Log the run to MLflow (`llmos train` installs the registry's
        tracking hook; same as `--track`). The trainer itself ignores it.
      register_as: Register the export as a new version of this model when
        training finishes (implies `track`; installed by `llmos train`).
      alerting: Alert rules and where alerts go (`@Alerting()`, the default:
        every rule, to the log and `alerts.jsonl`); None: no alert rule (a
        non-finite loss still stops the run).
      metrics_port: Serve `llmos_train_*` metrics for Prometheus on
        `metrics_host` at this port (0: any free port); None: no endpoint.
      lora: Train low-rank adapters only (`llmos_jax.compression.lora.LoraConfig`):
        the base is frozen and holds no optimizer state; the export holds the
        merged weights and `model_dir/adapters` the adapters alone. Needs
        `scan_layers=False` for now.
      metrics_host: The address the endpoint binds: 127.0.0.1 (this machine
        only) unless a Prometheus elsewhere scrapes it (e.g. 0.0.0.0).
    """

    model_config: TransformerConfig | None = None
    task_name: str | None = None
    objective: Objective | None = None
    batches: Callable[..., Any] = LMBatches
    init_from: InitFrom | None = None
    sequence_length: int | Mapping[str, int] = 128
    global_batch_size: int = 16
    num_steps: int = 1000
    microbatches: int = 1
    z_loss: float = 0.0
    seed: int = 0
    pack: bool = True
    mesh_config: MeshConfig = MeshConfig()
    axis_rules: Sequence[tuple[str, Any]] | Mapping[str, Any] = DEFAULT_RULES
    optimizer_factory: Callable[[], optax.GradientTransformation] = make_optimizer
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int | None = 8
    eval_split: str = "validation"
    evaluator: PeriodicEvaluator | None = None
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    export: bool = True
    sample_prompts: Sequence[str] = ("def ",)
    sample_new_tokens: int = 200
    sample_temperature: float = 0.8
    sample_top_k: int | None = 40
    stop_after_steps: int | None = None
    progress_bar: bool = True
    hooks: Sequence[TrainHook] = ()
    track: bool = False
    register_as: str | None = None
    lora: LoraConfig | None = None
    alerting: Alerting | None = dataclasses.field(default_factory=Alerting)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        # Gin gives lists and dicts; keep immutable, canonical values.
        object.__setattr__(self, "axis_rules", rules_from_mapping(self.axis_rules))
        object.__setattr__(self, "sample_prompts", tuple(self.sample_prompts))
        object.__setattr__(self, "hooks", tuple(self.hooks))
        if self.model_config is None:
            raise UserError("train.model_config is not bound; bind the architecture, e.g. "
                            "train.model_config = @TransformerConfig().")
        for name, minimum in (("global_batch_size", 1), ("num_steps", 0), ("microbatches", 1),
                              ("log_every", 1), ("eval_every", 0), ("checkpoint_every", 1),
                              ("keep_checkpoints", 1), ("sample_new_tokens", 0)):
            _at_least(name, getattr(self, name), minimum)
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise UserError(f"train.metrics_port={self.metrics_port} must be a port number "
                            "(0 to 65535; 0 picks a free port).")
        for name in ("eval_batches", "sample_top_k", "stop_after_steps"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 0 if name == "stop_after_steps" else 1)
        for name in ("z_loss", "sample_temperature"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name}={getattr(self, name)} must not be negative.")
        if self.global_batch_size % self.microbatches:
            raise UserError(f"train.microbatches={self.microbatches} must divide "
                            f"train.global_batch_size={self.global_batch_size}.")
        lengths = (self.sequence_length.values() if isinstance(self.sequence_length, Mapping)
                   else [self.sequence_length])
        if not all(isinstance(n, int) and n > 0 for n in lengths):
            raise UserError(f"train.sequence_length={self.sequence_length} must be a positive "
                            "length, or a positive length per feature.")
        config = self.model_config
        if self.lora is not None and config.scan_layers:
            raise UserError("train.lora needs TransformerConfig.scan_layers = False for now "
                            "(decoding rebuilds stacked layers without their adapters).")
        if (getattr(config, "position_embedding", None) == "learned"
                and self.longest_sequence > config.max_len):
            raise UserError(
                f"train.sequence_length={self.sequence_length} exceeds {type(config).__name__}."
                f"max_len={config.max_len}; raise max_len or shorten the sequence.")
        for hook in self.hooks:
            if not isinstance(hook, TrainHook):
                raise UserError(f"train.hooks holds {hook!r}, which is not a TrainHook (it needs "
                                "a `schedule`, `on_step(context)` and `on_end(context)`).")

    @classmethod
    def from_gin(cls, **overrides: Any) -> TrainConfig:
        """The config the parsed gin bindings give (`train.NAME = ...`); `overrides` win."""
        return gin.get_configurable(cls.gin_selector())(**overrides)

    @staticmethod
    def gin_selector() -> str:
        """Gin's full name of the config (`train` for short)."""
        return f"{GIN_MODULE}.{GIN_NAME}"

    @property
    def longest_sequence(self) -> int:
        """The longest feature length: what the position table must cover."""
        return (max(self.sequence_length.values()) if isinstance(self.sequence_length, Mapping)
                else self.sequence_length)

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one global batch (every feature's length counted)."""
        per_row = (sum(self.sequence_length.values()) if isinstance(self.sequence_length, Mapping)
                   else self.sequence_length)
        return self.global_batch_size * per_row

    def as_dict(self) -> dict[str, Any]:
        """The settings by name (shallow: `model_config` stays a config object)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise UserError(f"train.{name}={value!r} must be {what}.")


# `train.NAME = ...` bindings build the config; `model_dir` is `train()`'s own argument.
gin.external_configurable(TrainConfig, name=GIN_NAME, module=GIN_MODULE)
