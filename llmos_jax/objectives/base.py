"""What every training objective provides, and the sums they share.

An objective is the part of a run that depends on the model family: it
builds the model from its config and turns a batch into float32 *sums*
(loss numerators, weights, correct counts). Everything else (microbatching,
the optimizer, evaluation, logging) only adds sums up and divides:

- `sums` over a (micro)batch add up exactly across microbatches and eval
  batches, so means are taken once, over everything;
- `denominators` are read from the whole global batch before it is split,
  so `loss(sums, denominators)` is linear in the sums and the accumulated
  gradient equals the gradient of the full-batch mean loss;
- `metrics` turns sums (of a step, or of a whole eval pass) into means.

Padding rows that eval adds to fill its last batch are all zeros; objectives
weigh rows by `real_rows`, so such rows count nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.config import TransformerConfig
from llmos_jax.models.families import (ArchitectureKind, ModelFamily, families_of_kind,
                                       family_for_config)
from llmos_jax.objectives.loss import cross_entropy_sums

Batch = Mapping[str, jax.Array]
Sums = dict[str, jax.Array]

# What an objective's model gives evaluation (`Objective.predicts`):
PREDICTS_TEXT = "text"                      # generated text and target scores
PREDICTS_SEQUENCE_LABEL = "sequence_label"  # one class per example
PREDICTS_TOKEN_LABELS = "token_labels"      # one tag per word


@runtime_checkable
class Objective(Protocol):
    """A model family's loss, as the train and eval steps use it.

    Attributes:
      features: Batch keys the objective reads (others are ignored).
      generates_text: Whether the trained model can sample text (the trainer
        prints samples at the end only then).

    Optionally, `predicts` (a class attribute: `PREDICTS_TEXT`,
    `PREDICTS_SEQUENCE_LABEL` or `PREDICTS_TOKEN_LABELS`) says what evaluation
    asks the trained model for; an objective without it is not evaluated.
    """

    features: tuple[str, ...]
    generates_text: bool

    def build_model(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                    shard: axes.ActivationSharder) -> nnx.Module:
        """The model this objective trains, built from `config`."""

    def sums(self, model: nnx.Module, batch: Batch, *, dropout_key: jax.Array | None,
             z_loss: float) -> Sums:
        """float32 scalar sums over the rows of `batch`."""

    def denominators(self, batch: Batch) -> Sums:
        """The normalisers of `loss`, from the whole global batch."""

    def loss(self, sums: Sums, denominators: Sums) -> jax.Array:
        """The scalar to differentiate; linear in `sums`."""

    def metrics(self, sums: Sums) -> dict[str, Any]:
        """Means from sums; always has `loss`."""

    def describe(self) -> dict[str, Any]:
        """JSON-able settings, saved with each checkpoint."""


def real_rows(tokens: jax.Array) -> jax.Array:
    """float32 [batch]: 1 for rows with any non-pad token; eval's padding rows are all 0."""
    return jnp.any(tokens != 0, axis=-1).astype(jnp.float32)


def padding_segments(tokens: jax.Array) -> jax.Array:
    """int32 segment ids that mask padding (id 0) as the encoder expects: 1 real, 0 pad."""
    return (tokens != 0).astype(jnp.int32)


def prefixed_cross_entropy(prefix: str, logits: jax.Array, targets: jax.Array,
                           weights: jax.Array, z_loss: float) -> Sums:
    """`cross_entropy_sums` with every key prefixed, e.g. `mlm_weight`."""
    return {f"{prefix}{key}": value
            for key, value in cross_entropy_sums(logits, targets, weights, z_loss).items()}


def mean(numerator, denominator):
    """numerator / max(denominator, 1), for jax arrays and Python floats alike."""
    if isinstance(numerator, jax.Array) or isinstance(denominator, jax.Array):
        return numerator / jnp.maximum(denominator, 1.0)
    return numerator / max(denominator, 1.0)


def model_family(objective: str, config: TransformerConfig,
                 kind: ArchitectureKind) -> ModelFamily:
    """The registered family of `config`, refused unless it is of the `kind` the objective trains.

    The message names the gin binding to change and the config classes that would do.
    """
    family = family_for_config(config)
    if family.kind is not kind:
        wanted = " or ".join(f"@{f.config_class.__name__}()" for f in families_of_kind(kind))
        wanted = wanted or "(no such family registered)"
        raise UserError(
            f"train.objective={objective} needs train.model_config = {wanted} "
            f"(a {kind.value} family's config), got {type(config).__name__} (model family "
            f"{family.name!r}, a {family.kind.value}); include a matching model gin file "
            "(gin/models/).")
    return family


def check_batch_features(objective: Objective, keys) -> None:
    """A clear error when the data does not have the features the objective reads."""
    missing = [key for key in objective.features if key not in keys]
    if missing:
        raise UserError(
            f"train.objective={type(objective).__name__} reads batch features "
            f"{list(objective.features)}, but the data gives {sorted(keys)} (missing "
            f"{missing}). Use a task with these features; for tasks whose examples are already "
            "feature dicts set train.batches = @ExampleBatches, for text-to-text tasks "
            "LMBatches.feature_converter = 'enc_dec'.")
