"""make_optimizer, current_learning_rate and the weight-decay mask."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.weight_decay import describe_mask, weight_decay_mask

OPTIMIZERS = ("adamw", "adafactor", "lion")
LAYERS, EMBED, MLP = 2, 4, 8


def transformer_like_params():
    """Scanned-layer params: the stacked norm scales are 2-D, like kernels."""
    return {
        "embed": {"embedding": jnp.full((16, EMBED), 2.0)},
        "layers": {
            "attn": {"q": {"kernel": jnp.full((LAYERS, EMBED, EMBED), 2.0)}},
            "attn_norm": {"scale": jnp.full((LAYERS, EMBED), 2.0)},
            "mlp": {"wi": {"kernel": jnp.full((LAYERS, EMBED, MLP), 2.0),
                           "bias": jnp.full((LAYERS, MLP), 2.0)}},
        },
        "final_norm": {"scale": jnp.full((EMBED,), 2.0), "bias": jnp.full((EMBED,), 2.0)},
    }


EXPECTED_MASK = {
    "embed": {"embedding": True},
    "layers": {
        "attn": {"q": {"kernel": True}},
        "attn_norm": {"scale": False},
        "mlp": {"wi": {"kernel": True, "bias": False}},
    },
    "final_norm": {"scale": False, "bias": False},
}


def test_mask_decays_matrices_and_spares_biases_and_norms_even_when_stacked():
    assert weight_decay_mask(transformer_like_params()) == EXPECTED_MASK


def test_mask_handles_integer_keys():
    params = {"blocks": {0: {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}
    assert weight_decay_mask(params) == {"blocks": {0: {"kernel": True, "bias": False}}}


def test_mask_patterns_match_anywhere_in_the_path():
    params = {"ln_f": {"weight": jnp.ones(2)}, "proj": {"kernel": jnp.ones((2, 2))}}
    assert weight_decay_mask(params, exclude_patterns=(r"^ln_",)) == {
        "ln_f": {"weight": False}, "proj": {"kernel": True}}
    assert weight_decay_mask(params, exclude_patterns=()) == {
        "ln_f": {"weight": True}, "proj": {"kernel": True}}


def test_describe_mask_lists_paths_in_tree_order():
    decayed, excluded = describe_mask(transformer_like_params())
    assert decayed == ["embed/embedding", "layers/attn/q/kernel", "layers/mlp/wi/kernel"]
    assert excluded == ["final_norm/bias", "final_norm/scale", "layers/attn_norm/scale",
                        "layers/mlp/wi/bias"]


class TinyModel(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(2, 2, rngs=rngs)
        self.final_norm = nnx.LayerNorm(2, rngs=rngs)


def test_mask_reads_nnx_state_paths_without_the_variable_suffix():
    state = nnx.state(TinyModel(nnx.Rngs(0)), nnx.Param)
    assert describe_mask(state) == (["dense/kernel"], ["dense/bias", "final_norm/bias",
                                                       "final_norm/scale"])


def test_weight_decay_through_nnx_optimizer_spares_the_bias():
    model = TinyModel(nnx.Rngs(0))
    model.dense.bias[...] = jnp.full((2,), 2.0)  # Zero would not show a decay.
    kernel = np.asarray(model.dense.kernel[...])
    optimizer = nnx.Optimizer(model, make_optimizer(learning_rate=1.0, weight_decay=0.5),
                              wrt=nnx.Param)
    zero_grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    optimizer.update(model, zero_grads)
    np.testing.assert_allclose(model.dense.kernel[...], 0.5 * kernel, rtol=1e-6)
    np.testing.assert_array_equal(model.dense.bias[...], [2.0, 2.0])
    np.testing.assert_array_equal(model.final_norm.scale[...], [1.0, 1.0])
    assert float(current_learning_rate(optimizer.opt_state)) == 1.0


@pytest.mark.parametrize("patterns, message", [
    ("bias", "weight_decay_mask.exclude_patterns='bias' is one string"),
    (("(unclosed",), "weight_decay_mask.exclude_patterns has '(unclosed', not a valid regular"),
])
def test_bad_exclude_patterns_raise_user_error(patterns, message):
    with pytest.raises(UserError, match=r"--gin\.weight_decay_mask\.exclude_patterns") as error:
        weight_decay_mask({"w": jnp.ones(1)}, exclude_patterns=patterns)
    assert message in str(error.value)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_alone_shrinks_masked_in_params_by_lr_times_decay(name):
    # Zero gradients leave only the decay: decayed params become 2 * (1 - 0.5 * 0.2).
    # A rate other than 1 shows the decay is scaled by it (optax's adafactor alone
    # would give 2 * (1 - 0.2)).
    params = transformer_like_params()
    optimizer = make_optimizer(name=name, learning_rate=0.5, weight_decay=0.2)
    updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params),
                                  params)
    new_params = optax.apply_updates(params, updates)
    for decays, value in zip(jax.tree.leaves(EXPECTED_MASK), jax.tree.leaves(new_params)):
        np.testing.assert_allclose(value, 1.8 if decays else 2.0, rtol=1e-6)


def quadratic_target():
    return {"kernel": jnp.linspace(-1.0, 1.0, 128 * 128).reshape(128, 128),
            "bias": jnp.array([1.0, -2.0, 3.0, -0.5])}


def quadratic_loss(params, target):
    return sum(jnp.sum(jnp.square(params[k] - target[k])) for k in params)


@pytest.mark.parametrize("name, learning_rate", [("adamw", 0.1), ("adafactor", 0.1),
                                                 ("lion", 0.05)])
def test_each_optimizer_minimises_a_quadratic_in_50_steps(name, learning_rate):
    target = quadratic_target()
    optimizer = make_optimizer(name=name, learning_rate=learning_rate)
    params = jax.tree.map(jnp.zeros_like, target)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(quadratic_loss)(params, target)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    initial_loss = float(quadratic_loss(params, target))  # 5476.25
    for _ in range(50):
        params, state = step(params, state)
    assert float(quadratic_loss(params, target)) < 0.02 * initial_loss


def test_adafactor_factors_the_second_moment_of_large_matrices():
    state = make_optimizer(name="adafactor").init(quadratic_target())
    factored = state.inner_state[1][0]  # (clip, adafactor chain) -> scale_by_factored_rms.
    assert factored.v_row["kernel"].shape == (128,)
    assert factored.v_col["kernel"].shape == (128,)
    assert factored.v["bias"].shape == (4,)  # Vectors keep a full second moment.


def clipping_probe(grad_clip_norm):
    """Adam with b1 = b2 = 0 and eps = 1 maps a gradient g to -g / (|g| + 1)."""
    params = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    grads = {"a": jnp.array([3e6]), "b": jnp.array([4e6])}  # Global norm 5e6.
    optimizer = make_optimizer(name="adamw", learning_rate=1.0, b1=0.0, b2=0.0, eps=1.0,
                               weight_decay=0.0, grad_clip_norm=grad_clip_norm)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return float(updates["a"][0]), float(updates["b"][0])


def test_gradients_are_clipped_to_the_global_norm_before_the_optimizer():
    # Clipped to norm 5 the gradients are (3, 4): -3/4 and -4/5.
    assert clipping_probe(5.0) == pytest.approx((-0.75, -0.8), rel=1e-6)
    assert clipping_probe(None) == pytest.approx((-3e6 / (3e6 + 1), -4e6 / (4e6 + 1)), rel=1e-6)


def test_current_learning_rate_follows_the_gin_bound_schedule():
    gin.parse_config("""
        make_optimizer.learning_rate = @warmup_then_decay()
        warmup_then_decay.peak_learning_rate = 1e-3
        warmup_then_decay.warmup_steps = 100
        warmup_then_decay.decay_steps = 2000
    """)
    try:
        optimizer = make_optimizer()
    finally:
        gin.clear_config()
    params = {"w": jnp.ones(2)}
    state = optimizer.init(params)
    seen = [float(current_learning_rate(state))]
    update = jax.jit(optimizer.update)
    for _ in range(2):
        _, state = update({"w": jnp.ones(2)}, state, params)
        seen.append(float(jax.jit(current_learning_rate)(state)))
    # Before any update: step 0's rate; after update t: the rate update t used.
    assert seen == pytest.approx([1e-3 / 101, 1e-3 / 101, 2e-3 / 101], rel=1e-6)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32


def test_current_learning_rate_rejects_a_state_without_one():
    with pytest.raises(ValueError, match="make_optimizer"):
        current_learning_rate(optax.sgd(0.1).init({"w": jnp.ones(1)}))


@pytest.mark.parametrize("name, suggestion", [("adam", "'adamw'"), ("Lion", "'lion'"),
                                              ("adafactr", "'adafactor'")])
def test_unknown_optimizer_name_suggests_the_closest(name, suggestion):
    with pytest.raises(UserError) as error:
        make_optimizer(name=name)
    # gin appends "In call to configurable ..." on a second line.
    first_line = str(error.value).splitlines()[0]
    assert first_line.startswith(
        f"make_optimizer.name={name!r} is not one of adamw, adafactor, lion (did you mean "
        f"{suggestion}")
    assert first_line.endswith("set --gin.make_optimizer.name=...")


@pytest.mark.parametrize("overrides, message", [
    ({"grad_clip_norm": 0.0}, "make_optimizer.grad_clip_norm=0.0 must be > 0"),
    ({"weight_decay": -0.1}, "make_optimizer.weight_decay=-0.1 must be >= 0"),
    ({"b2": 1.0}, "make_optimizer.b2=1.0 must be in [0, 1)"),
    ({"learning_rate": -1.0}, "make_optimizer.learning_rate=-1.0 must be >= 0"),
    ({"learning_rate": "fast"}, "make_optimizer.learning_rate='fast' is neither a number nor"),
])
def test_out_of_range_hyperparameters_raise_user_error(overrides, message):
    with pytest.raises(UserError) as error:
        make_optimizer(**overrides)
    assert message in str(error.value)
