"""Token cross-entropy sums: label smoothing against an explicit smoothed target."""

import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.errors import UserError
from llmos_jax.objectives.loss import cross_entropy_sums
from llmos_jax.objectives import CausalLm, Seq2Seq

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 5, 7)).astype(np.float32) * 3
TARGETS = RNG.integers(0, 7, size=(2, 5))
WEIGHTS = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_is_cross_entropy_against_the_smoothed_target(smoothing):
    sums = cross_entropy_sums(jnp.asarray(LOGITS), jnp.asarray(TARGETS), jnp.asarray(WEIGHTS),
                              label_smoothing=smoothing)
    target = (1 - smoothing) * np.eye(7)[TARGETS] + smoothing / 7
    per_token = -(target * _log_softmax(LOGITS.astype(np.float64))).sum(-1)
    nll = -np.take_along_axis(_log_softmax(LOGITS.astype(np.float64)), TARGETS[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums["loss"]), (per_token * WEIGHTS).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["cross_entropy"]), (nll * WEIGHTS).sum(), rtol=1e-5)
    assert float(sums["weight"]) == 6.0
    if smoothing:  # Smoothing is in what is trained, not in what is reported.
        assert float(sums["loss"]) != pytest.approx(float(sums["cross_entropy"]), rel=1e-3)


@pytest.mark.parametrize("objective", [CausalLm, Seq2Seq])
def test_objectives_check_and_record_label_smoothing(objective):
    assert objective(label_smoothing=0.1).describe()["label_smoothing"] == 0.1
    with pytest.raises(UserError, match=r"label_smoothing=1\.0 must be in \[0, 1\)"):
        objective(label_smoothing=1.0)
