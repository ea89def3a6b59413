"""Entity-level (span) F1 for tagged sequences, scored by conlleval's rules.

Tags are ``O`` or ``<prefix>-<TYPE>`` with prefix ``B``, ``I``, ``E`` or
``S`` (a bare prefix, as in ``B``, is an entity of the empty type). The tag is
split at its first hyphen, so ``B-MISC-X`` has type ``MISC-X``. Chunks are
found the way the ``conlleval`` Perl script finds them, which reads IOB1, IOB2
and IOBES alike:

- a chunk starts at ``B-X`` or ``S-X``; at ``I-X``/``E-X`` after ``O``, after
  ``E-``/``S-``, or after a tag of another type;
- a chunk ends before ``B``, ``S`` or ``O``; after ``E-``/``S-``; and before a
  tag of another type.

So in IOB1 ``I-PER I-PER B-PER`` holds two chunks, an IOB2 sequence with a
stray ``I-LOC`` after ``O`` gets a chunk there, and ``B-X B-X`` is two chunks.
A predicted chunk is correct when a gold chunk has the same type, start and
end. This equals ``seqeval``'s default (conlleval) mode.

Scores are percentages (0-100), as conlleval prints them. Precision is 0
when nothing was predicted and recall is 0 when the gold has no chunks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from llmos_jax.errors import UserError

OUTSIDE = "O"
_PREFIXES = ("B", "I", "E", "S")


class Chunk(NamedTuple):
    """One entity: its type and token span ``[start, end)`` in its sequence."""

    type: str
    start: int
    end: int


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``.

    Raises:
      UserError: the tag is neither ``O`` nor a B/I/E/S prefix with a type.
    """
    prefix, _, entity_type = tag.partition("-")
    if tag == OUTSIDE or (prefix in _PREFIXES and (entity_type or tag == prefix)):
        return prefix, entity_type
    raise UserError(
        f"Tag {tag!r} is not a CoNLL tag; use 'O' or B-/I-/E-/S- followed by the "
        "entity type (e.g. 'B-PER'), or map the task's labels to such tags in its postprocessor."
    )


def _ends_chunk(previous_prefix: str, previous_type: str, prefix: str, entity_type: str) -> bool:
    """True when the chunk holding the previous token ends before this token."""
    if previous_prefix == OUTSIDE:
        return False
    return (
        previous_prefix in ("E", "S")
        or prefix in ("B", "S", OUTSIDE)
        or previous_type != entity_type
    )


def _starts_chunk(previous_prefix: str, previous_type: str, prefix: str, entity_type: str) -> bool:
    """True when a chunk starts at this token."""
    if prefix == OUTSIDE:
        return False
    return (
        prefix in ("B", "S")
        or previous_prefix in (OUTSIDE, "E", "S")
        or previous_type != entity_type
    )


def extract_chunks(tags: Sequence[str]) -> list[Chunk]:
    """The chunks in one tag sequence, in order, by conlleval's rules (see module doc)."""
    chunks = []
    previous_prefix, previous_type, start = OUTSIDE, "", 0
    for position, tag in enumerate([*tags, OUTSIDE]):
        prefix, entity_type = split_tag(tag)
        if _ends_chunk(previous_prefix, previous_type, prefix, entity_type):
            chunks.append(Chunk(previous_type, start, position))
        if _starts_chunk(previous_prefix, previous_type, prefix, entity_type):
            start = position
        previous_prefix, previous_type = prefix, entity_type
    return chunks


def _fraction(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _tag_list(tags: str | Sequence[str]) -> Sequence[str]:
    return tags.split() if isinstance(tags, str) else tags


def conll_span_f1(
    targets: Sequence[str | Sequence[str]], predictions: Sequence[str | Sequence[str]]
) -> dict[str, float]:
    """Entity-level precision, recall and F1, overall and F1 per entity type.

    The argument names follow seqio's ``(targets, predictions)`` shape.

    Args:
      targets: one gold tag sequence per sentence: a list of tags, or one
        string of whitespace-separated tags (a text-to-text model's output).
      predictions: one predicted tag sequence per sentence, in the same
        form, token-aligned with its target.

    Returns:
      ``{"precision", "recall", "f1"}`` plus ``"f1_<TYPE>"`` for every entity
      type in the gold or the predictions, all percentages (0-100).

    Raises:
      UserError: sentence counts or lengths differ, or a tag is malformed.
    """
    if len(targets) != len(predictions):
        raise UserError(
            f"conll_span_f1: got {len(targets)} target sentences but {len(predictions)} "
            "predicted ones; predict one tag sequence per sentence."
        )
    gold: set[tuple[int, Chunk]] = set()
    predicted: set[tuple[int, Chunk]] = set()
    for index, (target_tags, predicted_tags) in enumerate(zip(targets, predictions)):
        target_tags, predicted_tags = _tag_list(target_tags), _tag_list(predicted_tags)
        if len(target_tags) != len(predicted_tags):
            raise UserError(
                f"conll_span_f1: sentence {index} has {len(target_tags)} gold tags but "
                f"{len(predicted_tags)} predicted tags; predict one tag per token."
            )
        gold.update((index, chunk) for chunk in extract_chunks(target_tags))
        predicted.update((index, chunk) for chunk in extract_chunks(predicted_tags))
    correct = gold & predicted

    precision = _fraction(len(correct), len(predicted))
    recall = _fraction(len(correct), len(gold))
    results = {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * _f1(precision, recall)}

    def count_by_type(chunks: set[tuple[int, Chunk]]) -> Counter:
        return Counter(chunk.type for _, chunk in chunks)

    gold_by_type, predicted_by_type = count_by_type(gold), count_by_type(predicted)
    correct_by_type = count_by_type(correct)
    for entity_type in sorted(gold_by_type.keys() | predicted_by_type.keys()):
        type_precision = _fraction(correct_by_type[entity_type], predicted_by_type[entity_type])
        type_recall = _fraction(correct_by_type[entity_type], gold_by_type[entity_type])
        results[f"f1_{entity_type}"] = 100 * _f1(type_precision, type_recall)
    return results
