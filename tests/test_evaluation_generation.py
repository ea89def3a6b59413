"""BLEU and ROUGE: known values on fixed strings, and equality with sacrebleu / rouge-score."""

import subprocess
import sys

import numpy as np
import pytest

from llmos_jax.errors import UserError
from llmos_jax.metrics.generation import bleu, rouge

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

PREDICTIONS = [
    "The cat is on the mat.",
    "There is a dog in the garden, barking loudly.",
    "He reads books every evening",
    "Completely unrelated output",
]
TARGETS = [
    ["The cat sits on the mat.", "A cat is on the mat."],
    "A dog barks loudly in the garden.",
    ["Every evening he reads books.", "He reads a book each evening.", "He is reading books."],
    "Nothing in common here",
]


def test_bleu_hand_computed():
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on a mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(expected)
    assert bleu(["a b c d e"], ["a b c d e"])["bleu"] == pytest.approx(100.0)


def test_bleu_equals_sacrebleu_with_multiple_references():
    # sacrebleu takes reference streams; examples with fewer references get None.
    streams = [
        [TARGETS[0][0], TARGETS[1], TARGETS[2][0], TARGETS[3]],
        [TARGETS[0][1], None, TARGETS[2][1], None],
        [None, None, TARGETS[2][2], None],
    ]
    expected = sacrebleu.corpus_bleu(PREDICTIONS, streams).score
    assert bleu(TARGETS, PREDICTIONS)["bleu"] == pytest.approx(expected, abs=1e-12)
    # More references can only help here, so the score differs from the first-reference one.
    single = sacrebleu.corpus_bleu(PREDICTIONS, streams[:1]).score
    assert single < expected


def test_rouge_hand_computed():
    results = rouge(["the cat sat on the mat"], ["the cat sat"])
    # Unigrams: precision 3/3, recall 3/6; bigrams: precision 2/2, recall 2/5; LCS = 3 tokens.
    assert results["rouge1"] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)
    assert results["rouge2"] == pytest.approx(100 * 2 * 1 * 0.4 / 1.4)
    assert results["rougeL"] == pytest.approx(results["rouge1"])
    assert results["rougeLsum"] == pytest.approx(results["rougeL"])


def test_rouge_stems():
    assert rouge(["the cats were running"], ["the cat was run"], rouge_types=["rouge1"])["rouge1"] == (
        pytest.approx(100 * 3 / 4)  # the, cat, run match after stemming; were/was do not
    )
    unstemmed = rouge(["the cats were running"], ["the cat was run"], rouge_types=["rouge1"], use_stemmer=False)
    assert unstemmed["rouge1"] == pytest.approx(100 * 1 / 4)


def test_rouge_equals_rouge_score_mean_of_best_reference():
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    expected = {}
    for rouge_type in types:
        per_example = []
        for target, prediction in zip(TARGETS, PREDICTIONS):
            references = [target] if isinstance(target, str) else target
            per_example.append(max(scorer.score(r, prediction)[rouge_type].fmeasure for r in references))
        expected[rouge_type] = 100 * np.mean(per_example)
    assert rouge(TARGETS, PREDICTIONS) == pytest.approx(expected, abs=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(UserError, match="2 targets but 1 predictions"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(UserError, match="target 0 must be a string or a non-empty list"):
        rouge([[]], ["a"])


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` fail
    with pytest.raises(UserError, match=r"pip install 'llmos_jax\[eval\]'"):
        bleu(["a"], ["a"])


def test_import_is_light():
    heavy = ("tensorflow", "seqio", "sacrebleu", "rouge_score")
    code = (
        "import sys, llmos_jax.evaluation; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
