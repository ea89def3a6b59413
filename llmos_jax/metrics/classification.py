"""Label metrics for classification tasks: accuracy and macro F1.

Both follow seqio's metric-function shape, ``fn(targets, predictions) ->
{name: value}``, take one label per example (strings, ints, anything
hashable) and report percentages (0-100), as T5 and conlleval do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from llmos_jax.errors import UserError


def _check_paired(metric: str, targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise UserError(
            f"{metric}: got {len(targets)} targets but {len(predictions)} predictions; "
            "the metric needs one prediction per target example."
        )
    if not targets:
        raise UserError(f"{metric}: no examples to score; the evaluation split is empty.")


def accuracy(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[str, float]:
    """Percentage of examples whose prediction equals the target.

    Args:
      targets: the gold label of each example.
      predictions: the predicted label of each example, same order.

    Returns:
      ``{"accuracy": value}`` with value in [0, 100].
    """
    _check_paired("accuracy", targets, predictions)
    correct = sum(1 for target, prediction in zip(targets, predictions) if target == prediction)
    return {"accuracy": 100.0 * correct / len(targets)}


def per_label_f1(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[Hashable, float]:
    """F1 (a fraction in [0, 1]) of each label seen in targets or predictions.

    A label's F1 is ``2 tp / (2 tp + fp + fn)``: the harmonic mean of
    precision and recall, and 0 where either is undefined because the label
    was never predicted or never present (scikit-learn's ``zero_division=0``).
    """
    _check_paired("macro_f1", targets, predictions)
    true_positives: Counter = Counter()
    false_positives: Counter = Counter()
    false_negatives: Counter = Counter()
    for target, prediction in zip(targets, predictions):
        if target == prediction:
            true_positives[target] += 1
        else:
            false_positives[prediction] += 1
            false_negatives[target] += 1
    labels = dict.fromkeys(list(targets) + list(predictions))
    return {
        label: 2 * true_positives[label]
        / (2 * true_positives[label] + false_positives[label] + false_negatives[label])
        for label in labels
    }


def macro_f1(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[str, float]:
    """Unweighted mean of per-label F1 over every label in targets or predictions.

    Matches ``100 * sklearn.metrics.f1_score(targets, predictions,
    average="macro")``: a label that is only ever predicted counts with F1 0,
    so spurious labels lower the score.

    Returns:
      ``{"macro_f1": value}`` with value in [0, 100].
    """
    scores = per_label_f1(targets, predictions)
    return {"macro_f1": 100.0 * sum(scores.values()) / len(scores)}
