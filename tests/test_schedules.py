"""warmup_then_decay: nanoGPT parity, the other decays, and argument checks."""

import jax
import jax.numpy as jnp
import pytest

from llmos_jax.errors import UserError
from llmos_jax.training.schedules import warmup_then_decay

# float32 arithmetic against float64 references: one or two ulps.
REL = 1e-6


def nanogpt_schedule():
    return warmup_then_decay(peak_learning_rate=1e-3, warmup_steps=100, decay_steps=2000,
                             decay="cosine", end_learning_rate=1e-4)


# nanoGPT's get_lr(it) with learning_rate=1e-3, warmup_iters=100,
# lr_decay_iters=2000, min_lr=1e-4, evaluated in float64.
NANOGPT_LR = {
    0: 9.900990099009901e-06,  # 1e-3 * 1 / 101: the off-by-one warmup.
    50: 0.000504950495049505,  # 1e-3 * 51 / 101
    99: 0.0009900990099009901,
    100: 0.001,
    1000: 0.0005871607054625496,
    2000: 0.0001,
    3000: 0.0001,
}


@pytest.mark.parametrize("step", sorted(NANOGPT_LR))
def test_cosine_matches_nanogpt_get_lr(step):
    assert float(nanogpt_schedule()(step)) == pytest.approx(NANOGPT_LR[step], rel=REL)


def test_schedule_runs_under_jit_with_a_traced_step():
    schedule = jax.jit(nanogpt_schedule())
    assert float(schedule(jnp.int32(1000))) == pytest.approx(NANOGPT_LR[1000], rel=REL)


def test_linear_decay_reaches_end_at_decay_steps_then_holds():
    schedule = warmup_then_decay(peak_learning_rate=1.0, warmup_steps=10, decay_steps=110,
                                 decay="linear", end_learning_rate=0.1)
    assert float(schedule(10)) == pytest.approx(1.0, rel=REL)
    assert float(schedule(60)) == pytest.approx(0.55, rel=REL)
    assert float(schedule(110)) == pytest.approx(0.1, rel=REL)
    assert float(schedule(500)) == pytest.approx(0.1, rel=REL)


def test_rsqrt_decays_like_t5_and_stops_at_the_floor():
    schedule = warmup_then_decay(peak_learning_rate=1e-2, warmup_steps=100, decay_steps=0,
                                 decay="rsqrt", end_learning_rate=2e-3)
    assert float(schedule(100)) == pytest.approx(1e-2, rel=REL)
    assert float(schedule(400)) == pytest.approx(5e-3, rel=REL)
    assert float(schedule(1600)) == pytest.approx(2.5e-3, rel=REL)
    assert float(schedule(10_000)) == pytest.approx(2e-3, rel=REL)  # 1e-3 unfloored.


def test_rsqrt_without_warmup_starts_at_peak():
    schedule = warmup_then_decay(peak_learning_rate=1.0, warmup_steps=0, decay_steps=0,
                                 decay="rsqrt")
    assert [float(schedule(s)) for s in (0, 1, 4)] == pytest.approx([1.0, 1.0, 0.5], rel=REL)


def test_constant_holds_peak_after_a_warmup_from_initial():
    schedule = warmup_then_decay(peak_learning_rate=2.0, warmup_steps=9, decay_steps=0,
                                 decay="constant", initial_learning_rate=1.0)
    assert float(schedule(0)) == pytest.approx(1.1, rel=REL)  # 1 + (2 - 1) * 1 / 10
    assert float(schedule(4)) == pytest.approx(1.5, rel=REL)
    assert float(schedule(9)) == pytest.approx(2.0, rel=REL)
    assert float(schedule(1_000_000)) == pytest.approx(2.0, rel=REL)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"warmup_steps": -1}, "warmup_then_decay.warmup_steps=-1 must be a non-negative integer"),
        ({"decay_steps": -5}, "warmup_then_decay.decay_steps=-5 must be a non-negative integer"),
        ({"warmup_steps": 2.5}, "warmup_then_decay.warmup_steps=2.5 must be a non-negative integer"),
        ({"warmup_steps": 3000}, "warmup_then_decay.warmup_steps=3000 must be below "
                                 "warmup_then_decay.decay_steps=2000"),
        ({"warmup_steps": 2000, "decay": "linear"}, "warmup_then_decay.warmup_steps=2000 must be below"),
        ({"decay": "cosin"}, "warmup_then_decay.decay='cosin' is not one of cosine, linear, rsqrt, "
                             "constant (did you mean 'cosine'?); set --gin.warmup_then_decay.decay="),
        ({"peak_learning_rate": -1e-3}, "warmup_then_decay.peak_learning_rate=-0.001 must be >= 0"),
        ({"end_learning_rate": float("nan")}, "warmup_then_decay.end_learning_rate=nan must be >= 0"),
    ],
)
def test_bad_arguments_raise_user_error_naming_the_gin_parameter(overrides, message):
    arguments = dict(peak_learning_rate=1e-3, warmup_steps=100, decay_steps=2000)
    with pytest.raises(UserError) as error:
        warmup_then_decay(**{**arguments, **overrides})
    assert message in str(error.value)
    assert "--gin.warmup_then_decay." in str(error.value)


def test_warmup_past_decay_steps_is_fine_when_the_decay_ignores_them():
    schedule = warmup_then_decay(peak_learning_rate=1.0, warmup_steps=100, decay_steps=0,
                                 decay="constant")
    assert float(schedule(100)) == 1.0
