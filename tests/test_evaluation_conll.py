"""CoNLL span F1: conlleval's chunking rules on hand-made edge cases, and parity with seqeval."""

import warnings

import numpy as np
import pytest

from llmos_jax.errors import UserError
from llmos_jax.metrics.conll import Chunk, conll_span_f1, extract_chunks


@pytest.mark.parametrize(
    "tags, expected",
    [
        # IOB2, one chunk of each type, trailing chunk closed at the end.
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        # I- after O starts a chunk (IOB1, or a stray I- in IOB2).
        (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),
        # IOB1: B- only separates two adjacent chunks of one type.
        (["I-PER", "I-PER", "B-PER", "O"], [("PER", 0, 2), ("PER", 2, 3)]),
        # Adjacent B-X B-X are two chunks.
        (["B-ORG", "B-ORG"], [("ORG", 0, 1), ("ORG", 1, 2)]),
        # A type change inside I- tags ends one chunk and starts another.
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),
        # Trailing multi-token chunk.
        (["O", "O", "B-MISC", "I-MISC"], [("MISC", 2, 4)]),
        # IOBES: S- is a chunk, E- ends one, I- after E- starts one.
        (["S-PER", "B-LOC", "E-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)]),
        # The type is everything after the first hyphen.
        (["B-MISC-X", "I-MISC-X"], [("MISC-X", 0, 2)]),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_extract_chunks_follows_conlleval(tags, expected):
    assert extract_chunks(tags) == [Chunk(*chunk) for chunk in expected]


def test_hand_computed_scores():
    targets = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predictions = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-MISC"]]
    # gold: PER, LOC, ORG; predicted: PER, ORG (wrong type), ORG, MISC; correct: PER, ORG.
    results = conll_span_f1(targets, predictions)
    precision, recall = 2 / 4, 2 / 3
    assert results["precision"] == pytest.approx(100 * precision)
    assert results["recall"] == pytest.approx(100 * recall)
    assert results["f1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert results["f1_PER"] == pytest.approx(100.0)
    assert results["f1_LOC"] == 0.0
    assert results["f1_ORG"] == pytest.approx(100 * 2 * 0.5 * 1.0 / 1.5)
    assert results["f1_MISC"] == 0.0
    assert set(results) == {"precision", "recall", "f1", "f1_PER", "f1_LOC", "f1_ORG", "f1_MISC"}


def test_whitespace_separated_strings_equal_tag_lists():
    targets = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predictions = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-MISC"]]
    as_text = conll_span_f1([" ".join(t) for t in targets], [" ".join(p) for p in predictions])
    assert as_text == conll_span_f1(targets, predictions)


def test_chunk_must_match_in_the_same_sentence():
    # The same span in another sentence is not a match.
    results = conll_span_f1([["B-PER"], ["O"]], [["O"], ["B-PER"]])
    assert results["f1"] == 0.0


def test_no_predictions_scores_zero_not_nan():
    results = conll_span_f1([["B-PER", "O"]], [["O", "O"]])
    assert results == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "f1_PER": 0.0}


def test_bad_input_names_the_problem():
    with pytest.raises(UserError, match="'PER'"):
        conll_span_f1([["PER"]], [["O"]])
    with pytest.raises(UserError, match="sentence 1 has 2 gold tags but 1 predicted"):
        conll_span_f1([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(UserError, match="2 target sentences but 1"):
        conll_span_f1([["O"], ["O"]], [["O"]])


_TAGS = ["O", "O", "O"] + [f"{p}-{t}" for p in "BIES" for t in ("PER", "LOC", "ORG")]


def _corrupted(rng: np.random.Generator, tags: list[str], rate: float) -> list[str]:
    return [str(rng.choice(_TAGS)) if rng.random() < rate else tag for tag in tags]


def test_parity_with_seqeval_default_mode():
    sequence_labeling = pytest.importorskip("seqeval.metrics.sequence_labeling")
    rng = np.random.default_rng(0)
    # A mix of IOB1, IOB2 and IOBES tags; predictions replace ~30% of the
    # gold tags, so some chunks match and others break in every way.
    targets = [_corrupted(rng, ["O"] * int(rng.integers(1, 12)), 1.0) for _ in range(200)]
    predictions = [_corrupted(rng, tags, 0.3) for tags in targets]

    for tags in targets + predictions:
        # seqeval's spans are inclusive; ours are [start, end).
        assert extract_chunks(tags) == [
            Chunk(t, start, end + 1) for t, start, end in sequence_labeling.get_entities(tags)
        ]
    results = conll_span_f1(targets, predictions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        micro = sequence_labeling.precision_recall_fscore_support(targets, predictions, average="micro")
        _, _, per_type_f1, _ = sequence_labeling.precision_recall_fscore_support(targets, predictions)
    assert 0 < results["f1"] < 100
    assert results["precision"] == pytest.approx(100 * micro[0], abs=1e-9)
    assert results["recall"] == pytest.approx(100 * micro[1], abs=1e-9)
    assert results["f1"] == pytest.approx(100 * micro[2], abs=1e-9)
    # seqeval orders per-type results by sorted type name.
    assert [results[f"f1_{t}"] for t in ("LOC", "ORG", "PER")] == pytest.approx(
        [100 * f for f in per_type_f1], abs=1e-9
    )
