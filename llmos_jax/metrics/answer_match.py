"""Exact match and token F1 of generated answers (few-shot generation tasks, SQuAD-style).

Both compare a prediction with every acceptable answer of its example and keep
the best, after the normalisation SQuAD's official script applies: lower case,
no punctuation, no English articles (a, an, the), single spaces. A target is
one answer string or a list of them.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np

from llmos_jax.errors import UserError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """Lower case, without punctuation or articles, words separated by one space."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _answers(target: str | Sequence[str]) -> list[str]:
    return [target] if isinstance(target, str) else list(target)


def _token_f1(prediction: str, answer: str) -> float:
    predicted, expected = normalise_answer(prediction).split(), normalise_answer(answer).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _check(metric: str, targets: Sequence, predictions: Sequence[str]) -> None:
    if len(targets) != len(predictions):
        raise UserError(f"{metric}: {len(targets)} targets but {len(predictions)} predictions.")
    if not targets:
        raise UserError(f"{metric}: no examples to score.")


def exact_match(targets: Sequence[str | Sequence[str]],
                predictions: Sequence[str]) -> dict[str, float]:
    """``exact_match`` in percent: the normalised prediction equals a normalised answer."""
    _check("exact_match", targets, predictions)
    return {"exact_match": 100.0 * float(np.mean([
        any(normalise_answer(p) == normalise_answer(a) for a in _answers(t))
        for t, p in zip(targets, predictions)]))}


def answer_f1(targets: Sequence[str | Sequence[str]],
              predictions: Sequence[str]) -> dict[str, float]:
    """``answer_f1`` in percent: the best token-overlap F1 against any answer, averaged."""
    _check("answer_f1", targets, predictions)
    return {"answer_f1": 100.0 * float(np.mean([
        max(_token_f1(p, a) for a in _answers(t)) for t, p in zip(targets, predictions)]))}
