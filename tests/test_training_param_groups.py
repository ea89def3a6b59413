"""Frozen parameters and per-group learning rates through make_optimizer and the sharded state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmos_jax.errors import UserError
from llmos_jax.partitioning import DEFAULT_RULES, Layout, MeshConfig, build_mesh
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.train_state import init_train_state, state_shardings
from llmos_jax.objectives.model_building import model_spec

PARAMS = {"encoder": {"dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}},
          "classifier": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones((2,))},
          "pooler": {"kernel": jnp.ones((4, 4))}}
GRADS = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), PARAMS)


def apply_one_step(tx, params=PARAMS, grads=GRADS):
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_frozen_params_do_not_change_and_groups_get_their_rates():
    # SGD-like check with AdamW: the first Adam step moves each weight by lr * sign(grad)
    # (bias-corrected m/sqrt(v) = 1), so the step size reads back the group's rate.
    tx = make_optimizer(name="adamw", learning_rate=0.01, weight_decay=0.0, grad_clip_norm=1.0,
                        frozen_patterns=["^encoder/"],
                        learning_rate_multipliers={"^classifier/": 10.0})
    new, state = apply_one_step(tx)
    np.testing.assert_array_equal(new["encoder"]["dense"]["kernel"], 1.0)
    np.testing.assert_array_equal(new["encoder"]["dense"]["bias"], 1.0)
    np.testing.assert_allclose(1.0 - new["classifier"]["kernel"], 0.1, rtol=1e-4)
    np.testing.assert_allclose(1.0 - new["pooler"]["kernel"], 0.01, rtol=1e-4)
    assert float(current_learning_rate(state)) == pytest.approx(0.01)


def test_frozen_gradients_do_not_count_in_clipping():
    huge = jax.tree.map(lambda g: g, GRADS)
    huge["encoder"]["dense"]["kernel"] = jnp.full((4, 4), 1e6)

    def sgd(rate, **_):
        return optax.sgd(rate)
    from llmos_jax.training import optimizers
    optimizers._OPTIMIZERS["sgd_for_test"] = sgd
    try:
        tx = make_optimizer(name="sgd_for_test", learning_rate=1.0, weight_decay=0.0,
                            grad_clip_norm=100.0, frozen_patterns=["^encoder/"])
        new, _ = apply_one_step(tx, grads=huge)
    finally:
        del optimizers._OPTIMIZERS["sgd_for_test"]
    # Unclipped (the frozen 1e6 gradients were removed before the norm): step = grad = 0.5.
    np.testing.assert_allclose(1.0 - new["pooler"]["kernel"], 0.5, rtol=1e-6)


def test_pattern_matching_nothing_is_an_error():
    tx = make_optimizer(name="adamw", learning_rate=0.01, frozen_patterns=["^encodr/"])
    with pytest.raises(UserError, match="'\\^encodr/' .* matches no parameter"):
        apply_one_step(tx)
    with pytest.raises(UserError, match="must be a positive number"):
        make_optimizer(learning_rate_multipliers={"x": 0.0})
    with pytest.raises(UserError, match="not a valid regular expression"):
        make_optimizer(frozen_patterns=["("])


def test_grouped_state_shards_and_initialises_on_a_mesh():
    from llmos_jax.models import EncoderConfig, EncoderForSequenceClassification
    config = EncoderConfig(vocab_size=32, num_layers=2, embed_dim=16, num_heads=2, max_len=8,
                           position_embedding="learned", norm="layernorm", use_bias=True)
    spec = model_spec(lambda rngs: EncoderForSequenceClassification(config, 3, rngs=rngs), 0)
    tx = make_optimizer(learning_rate=1e-3, frozen_patterns=["^encoder/token_embed"],
                        learning_rate_multipliers=[("^classifier/", 5.0)])
    mesh = build_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    shardings = state_shardings(spec, tx, Layout(mesh, DEFAULT_RULES))
    state = init_train_state(spec, tx, shardings)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(shardings.opt_state)
    # Same optimizer-state layout as without groups: checkpoints stay interchangeable.
    plain = state_shardings(spec, make_optimizer(learning_rate=1e-3),
                            Layout(mesh, DEFAULT_RULES))
    assert (jax.tree.structure(plain.opt_state).num_leaves
            == jax.tree.structure(shardings.opt_state).num_leaves)
