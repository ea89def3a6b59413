"""Knowledge distillation: a student LM learns from a teacher's soft targets and the labels.

`Distillation` wraps the student's own objective (`CausalLm` or `Seq2Seq`).
In the same jitted step it runs the teacher on the batch (its logits under
`stop_gradient`, so no gradient and no optimizer state reach it) and trains

    loss = alpha * T^2 * H(softmax(teacher / T), softmax(student / T))
           + (1 - alpha) * (the student objective's own loss)

per weighted target token (Hinton et al.; T^2 keeps the soft term's gradient
scale independent of T). The soft term is the cross-entropy against the
teacher's distribution; it differs from KL(teacher || student) by the
teacher's entropy, a constant, and the KL is reported as `distill_kl`.

The teacher is a live module holding its weights (load it from a checkpoint
or export and place it with the run's layout: its parameters are then
sharded by the same rules as the student's). It lives in this layer because
it is an objective; `compression` holds the weight transforms.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import axes
from llmos_jax.models.config import TransformerConfig
from llmos_jax.objectives.base import Batch, Sums, mean
from llmos_jax.objectives.language_modeling import WEIGHTS, CausalLm, Seq2Seq


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                       temperature: float) -> tuple[jax.Array, jax.Array]:
    """Per token: (T^2 * H(p_teacher, p_student), T^2 * KL(p_teacher || p_student)) at T."""
    student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher_log = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher = jnp.exp(teacher_log)
    cross = -jnp.sum(teacher * student, axis=-1)
    kl = jnp.sum(teacher * (teacher_log - student), axis=-1)
    return temperature ** 2 * cross, temperature ** 2 * kl


class Distillation:
    """The student's objective plus a teacher's soft targets.

    Args:
      student: `CausalLm()` or `Seq2Seq()`: builds the student and gives the
        hard-label loss.
      teacher: The teacher model with its weights, of the same kind and vocabulary.
      temperature: T, above 0; softens both distributions.
      alpha: Weight of the soft term in [0, 1]; 1 trains on the teacher alone.
    """

    def __init__(self, student: CausalLm | Seq2Seq, teacher: nnx.Module, *,
                 temperature: float = 2.0, alpha: float = 0.5):
        if not isinstance(student, (CausalLm, Seq2Seq)):
            raise UserError(f"Distillation.student must be CausalLm() or Seq2Seq(), not "
                            f"{type(student).__name__}.")
        if not temperature > 0:
            raise UserError(f"Distillation.temperature={temperature} must be above 0 (e.g. 2.0).")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"Distillation.alpha={alpha} must be in [0, 1].")
        self.student, self.temperature, self.alpha = student, float(temperature), float(alpha)
        self.teacher_graphdef, self.teacher_state = nnx.split(teacher)
        self.teacher_vocab = teacher.config.vocab_size
        self.features = student.features
        self.generates_text = student.generates_text
        self.predicts = student.predicts

    def build_model(self, config: TransformerConfig, *, rngs: nnx.Rngs,
                    shard: axes.ActivationSharder) -> nnx.Module:
        if config.vocab_size != self.teacher_vocab:
            raise UserError(
                f"the teacher's vocabulary has {self.teacher_vocab} entries but the student's "
                f"(train.model_config.vocab_size) has {config.vocab_size}; distillation compares "
                "distributions token by token, so give the student the teacher's vocabulary.")
        return self.student.build_model(config, rngs=rngs, shard=shard)

    def teacher_logits(self, batch: Batch) -> jax.Array:
        teacher = nnx.merge(self.teacher_graphdef, self.teacher_state)
        return jax.lax.stop_gradient(self.student.logits(teacher, batch, dropout_key=None))

    def sums(self, model: nnx.Module, batch: Batch, *, dropout_key, z_loss: float) -> Sums:
        logits = self.student.logits(model, batch, dropout_key=dropout_key)
        teacher = self.teacher_logits(batch)
        if teacher.shape != logits.shape:
            raise UserError(f"teacher logits {teacher.shape} and student logits {logits.shape} "
                            "differ; the teacher must share the student's vocabulary.")
        hard = self.student._sums(logits, batch, z_loss)
        weights = batch[WEIGHTS].astype(jnp.float32)
        cross, kl = soft_cross_entropy(logits, teacher, self.temperature)
        soft = jnp.sum(cross * weights)
        return {**hard, "loss": self.alpha * soft + (1.0 - self.alpha) * hard["loss"],
                "soft_cross_entropy": soft, "distill_kl": jnp.sum(kl * weights)}

    def denominators(self, batch: Batch) -> Sums:
        return self.student.denominators(batch)

    def loss(self, sums: Sums, denominators: Sums) -> jax.Array:
        return self.student.loss(sums, denominators)

    def metrics(self, sums: Sums) -> dict[str, Any]:
        metrics = self.student.metrics(sums)
        if "distill_kl" in sums:
            metrics["distill_kl"] = mean(sums["distill_kl"], sums["weight"])
        return metrics

    def describe(self) -> dict[str, Any]:
        return {"name": "Distillation", "student": self.student.describe(),
                "temperature": self.temperature, "alpha": self.alpha,
                "teacher_vocab_size": self.teacher_vocab}
