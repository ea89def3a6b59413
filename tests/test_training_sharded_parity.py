"""The jitted train step computes the same thing on any mesh, with or without accumulation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.models import DecoderLM, llama_style_config
from llmos_jax.partitioning import DEFAULT_RULES, Layout, LogicalSharder, MeshConfig, build_mesh
from llmos_jax.checkpoints.checkpointer import numpy_tree
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.train_state import TrainState, init_train_state, state_shardings
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.training.train_step import (INPUTS, POSITIONS, SEGMENTS, TARGETS, WEIGHTS,
                                           StepConfig, jit_train_step, make_train_step)

CONFIG = llama_style_config(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4,
                            num_kv_heads=2, mlp_dim=48, max_len=16)
ROWS, LENGTH, STEPS = 16, 16, 3
SINGLE = (1, 1, 1)

# LLVM optimisation changes only the CPU machine code, not the partitioned
# program; level 0 compiles these steps several times faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def make_batches():
    """Fixed random batches of two packed documents per row, some target weights zero."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(STEPS):
        split = rng.integers(3, LENGTH - 3, ROWS)[:, None]
        index = np.arange(LENGTH)[None, :]
        batches.append({
            INPUTS: rng.integers(0, 64, (ROWS, LENGTH)).astype(np.int32),
            TARGETS: rng.integers(0, 64, (ROWS, LENGTH)).astype(np.int32),
            WEIGHTS: (rng.random((ROWS, LENGTH)) > 0.2).astype(np.float32),
            SEGMENTS: np.where(index < split, 1, 2).astype(np.int32),
            POSITIONS: np.where(index < split, index, index - split).astype(np.int32),
        })
    return batches


BATCHES = make_batches()


def mesh_for(shape):
    devices = jax.devices()[:1] if shape == SINGLE else None
    return build_mesh(MeshConfig(*shape), devices)


def setup(shape):
    mesh = mesh_for(shape)
    spec = model_spec(lambda rngs: DecoderLM(CONFIG, rngs=rngs,
                                             shard=LogicalSharder(mesh, DEFAULT_RULES)), 0)
    tx = make_optimizer(learning_rate=1e-2)
    return mesh, spec, tx, state_shardings(spec, tx, Layout(mesh, DEFAULT_RULES))


@functools.cache
def initial_state():
    """The initial TrainState (host copy), initialised once on one device."""
    _, spec, tx, shardings = setup(SINGLE)
    return numpy_tree(init_train_state(spec, tx, shardings))


@dataclasses.dataclass
class Run:
    mesh: object
    shardings: TrainState
    step_fn: object
    metrics: list
    params: list        # host copies after each step
    state: TrainState   # the live final state


@functools.cache
def train(shape, microbatches=1, z_loss=0.0, steps=STEPS) -> Run:
    mesh, spec, tx, shardings = setup(shape)
    state = jax.device_put(initial_state(), shardings)
    step_fn = jit_train_step(
        make_train_step(spec, tx, current_learning_rate,
                        StepConfig(microbatches=microbatches, z_loss=z_loss),
                        Layout(mesh, DEFAULT_RULES)),
        shardings, list(BATCHES[0]), Layout(mesh, DEFAULT_RULES))
    batches = [Layout(mesh, DEFAULT_RULES).global_batch(b) for b in BATCHES[:steps]]
    step_fn = step_fn.lower(state, batches[0]).compile(compiler_options=FAST_COMPILE)
    metrics, params = [], []
    for batch in batches:
        state, m = step_fn(state, batch)
        metrics.append({k: float(v) for k, v in m.items()})
        params.append(numpy_tree(state.params))
    return Run(mesh, shardings, step_fn, metrics, params, state)


def assert_params_match(a, b):
    """Parameters agree up to summation-order noise, as Adam amplifies it.

    Adam's first steps move each weight by about lr * g / |g|, so a gradient
    entry near zero (|g| ~ eps) turns float noise of 1e-9 into an update
    difference of a fraction of lr. Hence: nearly every element equal to 1e-6,
    and none off by more than 1% of the learning rate (1e-2).
    """
    assert jax.tree.structure(a) == jax.tree.structure(b)
    diffs = np.concatenate([np.abs(x - y).ravel() for x, y in
                            zip(jax.tree.leaves(a), jax.tree.leaves(b))])
    assert diffs.max() < 1e-4, diffs.max()
    assert np.mean(diffs > 1e-6) < 0.01, np.mean(diffs > 1e-6)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_sharded_training_equals_single_device(shape):
    """3 AdamW steps on a sharded mesh give the single-device losses and grad norms (1e-5 rel)
    and parameters."""
    reference, sharded = train(SINGLE), train(shape)
    ref_losses = [m["loss"] for m in reference.metrics]
    np.testing.assert_allclose([m["loss"] for m in sharded.metrics], ref_losses, rtol=1e-5)
    for key in ("grad_norm", "accuracy", "tokens", "learning_rate"):
        np.testing.assert_allclose([m[key] for m in sharded.metrics],
                                   [m[key] for m in reference.metrics], rtol=1e-5, err_msg=key)
    for step in range(STEPS):
        assert_params_match(sharded.params[step], reference.params[step])
    # The comparison has teeth: training moved the weights by far more than the tolerance.
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), reference.params[-1],
                         initial_state().params)
    assert max(jax.tree.leaves(moved)) > 1e-2
    assert reference.metrics[0]["tokens"] == sum(BATCHES[0][WEIGHTS].ravel())


def test_gradient_accumulation_matches_one_big_batch():
    """microbatches=4 gives the losses and grad norms (1e-5 rel) and params of microbatches=1."""
    whole, accumulated = train((2, 2, 2)), train((2, 2, 2), microbatches=4, steps=2)
    np.testing.assert_allclose([m["loss"] for m in accumulated.metrics],
                               [m["loss"] for m in whole.metrics[:2]], rtol=1e-5)
    np.testing.assert_allclose([m["tokens"] for m in accumulated.metrics],
                               [m["tokens"] for m in whole.metrics[:2]])
    np.testing.assert_allclose([m["grad_norm"] for m in accumulated.metrics],
                               [m["grad_norm"] for m in whole.metrics[:2]], rtol=1e-5)
    for step in range(2):
        assert_params_match(accumulated.params[step], whole.params[step])


def test_z_loss_changes_gradients_but_not_logged_loss():
    """With z_loss > 0 the logged `loss` is still the cross-entropy; gradients and params change."""
    plain, with_z = train(SINGLE), train(SINGLE, z_loss=0.1, steps=1)
    np.testing.assert_allclose(with_z.metrics[0]["loss"], plain.metrics[0]["loss"], rtol=1e-6)
    assert plain.metrics[0]["z_loss"] == 0.0
    # log Z is about log(64) for small logits, so the z-loss term is near 0.1 * 4.16**2.
    assert 1.0 < with_z.metrics[0]["z_loss"] < 2.5
    assert abs(with_z.metrics[0]["grad_norm"] - plain.metrics[0]["grad_norm"]) > \
        1e-3 * plain.metrics[0]["grad_norm"]
    differences = jax.tree.map(lambda a, b: np.abs(a - b).max(), with_z.params[0],
                               plain.params[0])
    assert max(jax.tree.leaves(differences)) > 1e-4


def test_step_donates_state_and_keeps_shardings():
    """The old state's buffers are deleted by the call, and the new state has the same shardings."""
    run = train((2, 2, 2))
    state = jax.tree.map(jnp.copy, run.state)
    assert jax.tree.all(jax.tree.map(lambda x, s: x.sharding == s, state, run.shardings))
    batch = Layout(run.mesh, DEFAULT_RULES).global_batch(BATCHES[0])
    new_state, metrics = run.step_fn(state, batch)
    old_leaves = jax.tree.leaves(state)
    assert old_leaves and all(x.is_deleted() for x in old_leaves)
    assert not any(x.is_deleted() for x in jax.tree.leaves(new_state))
    assert jax.tree.all(jax.tree.map(lambda x, s: x.sharding == s, new_state, run.shardings))
    assert int(new_state.step) == STEPS + 1
    assert all(m.sharding.is_fully_replicated for m in metrics.values())
    # The batch is not donated.
    assert not any(x.is_deleted() for x in batch.values())
