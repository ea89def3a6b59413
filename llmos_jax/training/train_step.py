"""The jit-compiled train and eval steps, with explicit shardings and donation.

Gradient accumulation splits the global batch into microbatches inside the
step (a `lax.scan`), summing loss terms and gradients in float32, so the result
equals one big batch up to summation order. Dropout keys are
`fold_in(seed, step)`: a resumed run draws the same masks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmos_jax import runtime
from llmos_jax.partitioning.global_batch import batch_sharding
from llmos_jax.partitioning.rules import AxisRules
from llmos_jax.training.loss import cross_entropy_sums
from llmos_jax.training.train_state import ModelSpec, TrainState

Batch = Mapping[str, jax.Array]

INPUTS = "decoder_input_tokens"
TARGETS = "decoder_target_tokens"
WEIGHTS = "decoder_loss_weights"
SEGMENTS = "decoder_segment_ids"
POSITIONS = "decoder_positions"


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


def _forward_sums(spec: ModelSpec, params, batch: Batch, z_loss: float, dropout_key):
    model = spec.merge(params)
    logits = model(batch[INPUTS], positions=batch.get(POSITIONS),
                   segment_ids=batch.get(SEGMENTS), dropout_key=dropout_key)
    return cross_entropy_sums(logits, batch[TARGETS], batch[WEIGHTS], z_loss)


def _split_microbatches(batch: Batch, n: int, mesh: Mesh, rules: AxisRules) -> Batch:
    """[B, ...] -> [n, B/n, ...] taking rows i*n + m into microbatch m.

    Interleaving keeps each microbatch spread over every data-parallel device
    (each device holds a contiguous block of rows), so no data moves.
    """
    def split(x):
        rows = x.shape[0]
        x = x.reshape((rows // n, n) + x.shape[1:]).swapaxes(0, 1)
        sharding = batch_sharding(mesh, rules, x.ndim - 1)
        spec = PartitionSpec(None, *sharding.spec)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return {k: split(v) for k, v in batch.items()}


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation,
                    learning_rate_of: Callable[[optax.OptState], jax.Array], config: StepConfig,
                    mesh: Mesh, rules: AxisRules):
    """Returns `train_step(state, batch) -> (state, metrics)` (not yet jitted).

    Args:
      learning_rate_of: Reads the learning rate the update applied from the new
        optimizer state (see `optimizers.current_learning_rate`).
    """

    def grads_and_sums(params, batch, key):
        def loss_fn(p):
            sums = _forward_sums(spec, p, batch, config.z_loss, key)
            return sums["loss"], sums
        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, sums

    def train_step(state: TrainState, batch: Batch):
        base_key = (jax.random.fold_in(jax.random.key(config.dropout_seed), state.step)
                    if config.use_dropout else None)
        if config.microbatches == 1:
            grads, sums = grads_and_sums(state.params, batch, base_key)
        else:
            micro = _split_microbatches(batch, config.microbatches, mesh, rules)
            zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            zero_sums = {k: jnp.zeros((), jnp.float32)
                         for k in ("loss", "cross_entropy", "z_loss", "correct", "weight")}

            def accumulate(carry, xs):
                index, mb = xs
                key = None if base_key is None else jax.random.fold_in(base_key, index)
                g, s = grads_and_sums(state.params, mb, key)
                acc_g, acc_s = carry
                acc_g = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc_g, g)
                acc_s = {k: acc_s[k] + s[k] for k in acc_s}
                return (acc_g, acc_s), None

            (grads, sums), _ = jax.lax.scan(
                accumulate, (zero_grads, zero_sums),
                (jnp.arange(config.microbatches), micro))
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": sums["cross_entropy"] / denom,
            "z_loss": sums["z_loss"] / denom,
            "accuracy": sums["correct"] / denom,
            "tokens": sums["weight"],
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": jnp.asarray(learning_rate_of(opt_state), jnp.float32),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(spec: ModelSpec):
    """Returns `eval_step(params, batch) -> sums` (deterministic, no dropout)."""

    def eval_step(params, batch: Batch):
        sums = _forward_sums(spec, params, batch, 0.0, None)
        return {"cross_entropy": sums["cross_entropy"], "correct": sums["correct"],
                "weight": sums["weight"]}

    return eval_step


def jit_train_step(train_step, state_shardings: TrainState, batch_keys, mesh: Mesh,
                   rules: AxisRules):
    """jit with explicit in/out shardings; the old state's buffers are donated.

    On CPU this also tunes the host allocator (`llmos_jax.runtime`), in case the
    entry point did not do it before JAX started.
    """
    if any(device.platform == "cpu" for device in mesh.devices.flat):
        runtime.configure_host_allocator()
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {k: batch_sharding(mesh, rules, 2) for k in batch_keys}
    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def jit_eval_step(eval_step, param_shardings, batch_keys, mesh: Mesh, rules: AxisRules):
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {k: batch_sharding(mesh, rules, 2) for k in batch_keys}
    return jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings),
                   out_shardings=replicated)
