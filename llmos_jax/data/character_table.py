"""The id mapping of a character vocabulary, with no seqio or TensorFlow.

``CharacterVocabulary`` (the seqio vocabulary that tasks use) keeps its
mapping in a :class:`CharacterTable`. The table alone is what a host without
TensorFlow needs to train on a split snapshot (``LMBatches.snapshot_dir``):
encode prompts, decode samples, and fingerprint the vocabulary identically,
so a checkpoint written there resumes and evaluates on a seqio host.

====  =========================================================
id    meaning
====  =========================================================
0     padding (never a character)
1     EOS, appended to each document
2     UNK, any character outside the set (decodes to U+FFFD)
3...  the characters, in Unicode code-point order
====  =========================================================
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from llmos_jax.errors import UserError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_SPECIAL_IDS = 3
UNK_TEXT = "\ufffd"
JSON_FORMAT = "llmos_char_vocab"
JSON_VERSION = 1
# The class name recorded in checkpoint metadata; both the seqio vocabulary and
# the bare table describe themselves by it, so their checkpoints are interchangeable.
DESCRIPTION_CLASS = "CharacterVocabulary"


def characters_of(texts: Iterable[str]) -> str:
    """The distinct characters of ``texts`` in code-point order."""
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    return "".join(sorted(seen))


def check_characters(characters: str, setting: str) -> None:
    """Raises a UserError naming ``setting`` unless ``characters`` is a usable set."""
    if not isinstance(characters, str) or not characters or len(set(characters)) != len(characters):
        raise UserError(f"{setting} must be a non-empty string of distinct characters.")


def parse_json(text: str, source: str) -> str:
    """The character set of a vocabulary JSON text; ``source`` names it in errors."""
    try:
        content = json.loads(text)
        characters = content["characters"]
        if content.get("format") != JSON_FORMAT or not isinstance(characters, str):
            raise ValueError("not an llmos character vocabulary")
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{source} is not a character vocabulary file ({error}); "
                        "regenerate it with CharacterVocabulary.save_json.") from None
    check_characters(characters, source)
    return characters


class CharacterTable:
    """Characters ↔ ids (see the module docstring), in plain Python."""

    def __init__(self, characters: str):
        check_characters(characters, "CharacterTable.characters")
        self.characters = characters
        self._ids = {c: i + NUM_SPECIAL_IDS for i, c in enumerate(characters)}

    @classmethod
    def from_json(cls, text: str, source: str = "character vocabulary JSON") -> CharacterTable:
        return cls(parse_json(text, source))

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL_IDS + len(self.characters)

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, UNK_ID) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; padding and EOS produce nothing; UNK, and ids past the
        vocabulary (a model's padded vocabulary can emit them), produce U+FFFD."""
        pieces = []
        for i in ids:
            i = int(i)
            if NUM_SPECIAL_IDS <= i < self.vocab_size:
                pieces.append(self.characters[i - NUM_SPECIAL_IDS])
            elif i == UNK_ID or i >= self.vocab_size:
                pieces.append(UNK_TEXT)
        return "".join(pieces)

    def to_json(self) -> str:
        """The canonical JSON text (what ``CharacterVocabulary.save_json`` writes)."""
        return json.dumps({"format": JSON_FORMAT, "version": JSON_VERSION,
                           "characters": self.characters}, ensure_ascii=False, sort_keys=True)

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`to_json`: equal exactly when the id mapping is equal."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The checkpoint-metadata record (``run_metadata.describe_vocabulary``)."""
        return {"class": DESCRIPTION_CLASS, "vocab_size": self.vocab_size,
                "sha256": self.fingerprint()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharacterTable) and self.characters == other.characters

    def __hash__(self) -> int:
        return hash(self.characters)

    def __repr__(self) -> str:
        return f"CharacterTable(vocab_size={self.vocab_size})"
