"""The jit-compiled train and eval steps, with explicit shardings and donation.

What the step computes is the objective's business (`objectives`): it maps a
batch to float32 sums and says how they make the loss. The step itself is the
same for every model family. Gradient accumulation splits the global batch
into microbatches inside the step (a `lax.scan`), summing loss terms and
gradients in float32; the loss's denominators are read from the whole batch
first, so the result equals one big batch up to summation order. Dropout keys
are `fold_in(seed, step)`: a resumed run draws the same masks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from llmos_jax import runtime
from llmos_jax.compression.lora import adapter_dropout
from llmos_jax.partitioning import Layout
from llmos_jax.objectives import CausalLm, Objective
from llmos_jax.objectives.language_modeling import (INPUTS, POSITIONS, SEGMENTS,
                                                             TARGETS, WEIGHTS)
from llmos_jax.training.train_state import TrainState
from llmos_jax.objectives.model_building import ModelSpec

Batch = Mapping[str, jax.Array]

__all__ = ["INPUTS", "TARGETS", "WEIGHTS", "SEGMENTS", "POSITIONS", "StepConfig",
           "make_train_step", "make_eval_step", "jit_train_step", "jit_eval_step"]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step.

    Attributes:
      microbatches: Gradient-accumulation steps per global batch.
      z_loss: PaLM z-loss coefficient (0 disables).
      dropout_seed: Base of the per-step dropout keys.
      use_dropout: Whether the model's dropout is active in training.
    """

    microbatches: int = 1
    z_loss: float = 0.0
    dropout_seed: int = 0
    use_dropout: bool = True


def _split_microbatches(batch: Batch, n: int, layout: Layout) -> Batch:
    """[B, ...] -> [n, B/n, ...] taking rows i*n + m into microbatch m.

    Interleaving keeps each microbatch spread over every data-parallel device
    (each device holds a contiguous block of rows), so no data moves.
    """
    def split(x):
        rows = x.shape[0]
        x = x.reshape((rows // n, n) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, layout.microbatch_sharding(x.ndim))

    return {k: split(v) for k, v in batch.items()}


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation,
                    learning_rate_of: Callable[[optax.OptState], jax.Array], config: StepConfig,
                    layout: Layout, objective: Objective | None = None,
                    trained: Callable[[Any], Any] | None = None):
    """Returns `train_step(state, batch) -> (state, metrics)` (not yet jitted).

    Args:
      layout: Lays microbatches out like batches.
      learning_rate_of: Reads the learning rate the update applied from the new
        optimizer state (see `optimizers.current_learning_rate`).
      objective: What to compute; the decoder LM (`CausalLm`) by default.
      trained: Maps the parameters to a tree of bools, True where they train
        (LoRA: the adapters). The others pass through `stop_gradient`, so
        their weight gradients (a third of a full step's matmuls) are never
        computed; they get zero gradients. None: everything trains.
    """
    objective = CausalLm() if objective is None else objective

    def grads_and_sums(params, batch, key, denominators):
        def loss_fn(p):
            if trained is not None:
                p = jax.tree.map(lambda train, x: x if train else jax.lax.stop_gradient(x),
                                 trained(p), p)
            with adapter_dropout(key):  # LoRA adapters' own dropout (a no-op without them)
                sums = objective.sums(spec.merge(p), batch, dropout_key=key, z_loss=config.z_loss)
            return objective.loss(sums, denominators), sums
        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, sums

    def train_step(state: TrainState, batch: Batch):
        base_key = (jax.random.fold_in(jax.random.key(config.dropout_seed), state.step)
                    if config.use_dropout else None)
        denominators = objective.denominators(batch)
        if config.microbatches == 1:
            grads, sums = grads_and_sums(state.params, batch, base_key, denominators)
        else:
            micro = _split_microbatches(batch, config.microbatches, layout)
            first = jax.tree.map(lambda x: x[0], micro)
            sums_shape = jax.eval_shape(
                lambda: grads_and_sums(state.params, first, base_key, denominators)[1])
            # Frozen parameters' gradients are zero: the accumulator holds a scalar for
            # each (not a float32 copy of the base) and they are filled in after the scan.
            accumulated = (jax.tree.map(lambda p: True, state.params) if trained is None
                           else trained(state.params))
            zero_grads = jax.tree.map(
                lambda keep, p: jnp.zeros(p.shape if keep else (), jnp.float32),
                accumulated, state.params)
            zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), sums_shape)

            def accumulate(carry, xs):
                index, mb = xs
                key = None if base_key is None else jax.random.fold_in(base_key, index)
                g, s = grads_and_sums(state.params, mb, key, denominators)
                acc_g, acc_s = carry
                acc_g = jax.tree.map(lambda keep, a, b: a + b.astype(jnp.float32) if keep else a,
                                     accumulated, acc_g, g)
                acc_s = {k: acc_s[k] + s[k] for k in acc_s}
                return (acc_g, acc_s), None

            (grads, sums), _ = jax.lax.scan(
                accumulate, (zero_grads, zero_sums),
                (jnp.arange(config.microbatches), micro))
            grads = jax.tree.map(lambda keep, g, p: g if keep else jnp.zeros_like(p),
                                 accumulated, grads, state.params)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **objective.metrics(sums),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": jnp.asarray(learning_rate_of(opt_state), jnp.float32),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(spec: ModelSpec, objective: Objective | None = None):
    """Returns `eval_step(params, batch) -> sums` (deterministic, no dropout).

    Sums of several batches add up; `objective.metrics` turns the totals into means.
    """
    objective = CausalLm() if objective is None else objective

    def eval_step(params, batch: Batch):
        return objective.sums(spec.merge(params), batch, dropout_key=None, z_loss=0.0)

    return eval_step


def jit_train_step(train_step, state_shardings: TrainState,
                   batch_ranks: Mapping[str, int] | Sequence[str], layout: Layout):
    """jit with explicit in/out shardings; the old state's buffers are donated.

    `batch_ranks` maps each batch feature to its rank (a list of names: rank 2).
    On CPU this also tunes the host allocator (`llmos_jax.runtime`), in case the
    entry point did not do it before JAX started.
    """
    if any(device.platform == "cpu" for device in layout.mesh.devices.flat):
        runtime.configure_host_allocator()
    return jax.jit(train_step, in_shardings=(state_shardings, layout.batch_shardings(batch_ranks)),
                   out_shardings=(state_shardings, layout.replicated), donate_argnums=(0,))


def jit_eval_step(eval_step, param_shardings, batch_ranks: Mapping[str, int] | Sequence[str],
                  layout: Layout):
    """jit with explicit shardings: parameters as trained, batches over the data axes."""
    return jax.jit(eval_step, in_shardings=(param_shardings, layout.batch_shardings(batch_ranks)),
                   out_shardings=layout.replicated)
