"""Multiple-choice accuracy from per-choice log-likelihoods (few-/zero-shot evaluation).

Each scored row is one (example, choice) pair (`llmos_jax.data.few_shot`);
its target, postprocessed, says which example and choice it is and the
correct label, and its score is ``(log_likelihood, num_tokens, ...)``. The
chosen answer is the most likely choice (``mc_accuracy``), or the most
likely per UTF-8 byte of the choice's text (``mc_accuracy_norm``, as
lm-evaluation-harness's ``acc_norm``). Ties go to the lower choice index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from llmos_jax.errors import UserError


def choices_by_example(targets: Sequence[Mapping], scores: Sequence[Sequence[float]]
                       ) -> dict[int, tuple[int, list[tuple[float, int]]]]:
    """example -> (label, [(log_likelihood, byte length) per choice, in choice order])."""
    if len(targets) != len(scores):
        raise UserError(f"multiple_choice_accuracy: {len(targets)} targets but {len(scores)} "
                        "scores.")
    grouped: dict[int, dict[int, tuple[float, int]]] = {}
    labels: dict[int, int] = {}
    for target, score in zip(targets, scores):
        if not isinstance(target, Mapping) or "example" not in target:
            raise UserError("multiple_choice_accuracy needs the targets of a multiple-choice "
                            "Task (llmos_jax.data.few_shot.register_multiple_choice_task).")
        example = int(target["example"])
        labels[example] = int(target["label"])
        grouped.setdefault(example, {})[int(target["choice"])] = (
            float(score[0]), len(str(target["text"]).encode("utf-8")))
    return {example: (labels[example], [choices[c] for c in sorted(choices)])
            for example, choices in sorted(grouped.items())}


def chosen_answers(targets: Sequence[Mapping], scores: Sequence[Sequence[float]], *,
                   normalise: bool) -> dict[int, int]:
    """example -> the index of its most likely choice."""
    chosen = {}
    for example, (_, choices) in choices_by_example(targets, scores).items():
        values = [ll / max(length, 1) if normalise else ll for ll, length in choices]
        chosen[example] = int(np.argmax(values))
    return chosen


def multiple_choice_accuracy(targets: Sequence[Mapping],
                             scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """``mc_accuracy`` and ``mc_accuracy_norm`` in percent (see the module docstring)."""
    grouped = choices_by_example(targets, scores)
    metrics = {}
    for name, normalise in (("mc_accuracy", False), ("mc_accuracy_norm", True)):
        chosen = chosen_answers(targets, scores, normalise=normalise)
        metrics[name] = 100.0 * float(np.mean([chosen[e] == label
                                                for e, (label, _) in grouped.items()]))
    return metrics
