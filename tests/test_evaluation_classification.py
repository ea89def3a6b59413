"""Accuracy and macro F1: hand-computed values and parity with scikit-learn."""

import numpy as np
import pytest

from llmos_jax.errors import UserError
from llmos_jax.metrics.classification import accuracy, macro_f1, per_label_f1


def test_accuracy_hand_computed():
    assert accuracy(["a", "b", "b", "c"], ["a", "b", "c", "c"]) == {"accuracy": 75.0}


def test_macro_f1_hand_computed():
    targets = ["pos", "pos", "neg", "neg", "neg"]
    predictions = ["pos", "neg", "neg", "neg", "neu"]
    # pos: tp 1, fp 0, fn 1 -> 2/3. neg: tp 2, fp 1, fn 1 -> 4/6.
    # neu is only predicted: tp 0, fp 1 -> F1 0, and it still counts in the mean.
    assert per_label_f1(targets, predictions) == pytest.approx({"pos": 2 / 3, "neg": 2 / 3, "neu": 0.0})
    assert macro_f1(targets, predictions)["macro_f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)


def test_perfect_and_integer_labels():
    assert macro_f1([0, 1, 2], [0, 1, 2]) == {"macro_f1": 100.0}


def test_parity_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, size=300).tolist()
    predictions = [t if rng.random() < 0.6 else int(rng.integers(0, 6)) for t in targets]
    assert macro_f1(targets, predictions)["macro_f1"] == pytest.approx(
        100 * metrics.f1_score(targets, predictions, average="macro"), abs=1e-9
    )
    assert accuracy(targets, predictions)["accuracy"] == pytest.approx(
        100 * metrics.accuracy_score(targets, predictions), abs=1e-9
    )


def test_mismatched_or_empty_inputs_raise():
    with pytest.raises(UserError, match="2 targets but 1 predictions"):
        accuracy(["a", "b"], ["a"])
    with pytest.raises(UserError, match="empty"):
        macro_f1([], [])
