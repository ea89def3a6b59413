"""Vocabularies' id mappings with no seqio or TensorFlow.

A host without TensorFlow that trains on a split snapshot
(``LMBatches.snapshot_dir``) still has to encode prompts, decode samples and
fingerprint the vocabulary exactly as the seqio vocabulary does, so that a
checkpoint written there resumes and evaluates on a seqio host. These tables
do that for the three kinds a snapshot can carry:

* :class:`CharacterTable`: the mapping inside ``CharacterVocabulary``, which
  delegates to it; the id layout is below.
* :class:`SentencePieceTable`: a SentencePiece model's, behaving like
  ``seqio.SentencePieceVocabulary`` without extra ids.
* :class:`ByteTable`: UTF-8 bytes, behaving like ``seqio.ByteVocabulary``
  without extra ids (the byte-level text tasks' vocabulary).

``decode`` follows ``seqio.Vocabulary.decode``: ids past the vocabulary
become UNK and decoding stops at the first EOS.

Character ids:

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
import sys
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


def seqio_clean_ids(ids: Iterable[int], vocab_size: int, unk_id: int, eos_id: int) -> list[int]:
    """``seqio.Vocabulary.decode``'s ids: past the vocabulary -> UNK, cut at the first EOS."""
    clean = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        clean.append(unk_id if i >= vocab_size else i)
    return clean


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
        """Text up to the first EOS; padding produces nothing, UNK (and ids past
        the vocabulary, which a model's padded vocabulary can emit) U+FFFD."""
        return self.decode_pieces(seqio_clean_ids(ids, self.vocab_size, UNK_ID, EOS_ID))

    def decode_pieces(self, ids: Iterable[int]) -> str:
        """Text of in-range ``ids`` without seqio's EOS handling (its ``_decode``)."""
        pieces = []
        for i in ids:
            i = int(i)
            if i >= NUM_SPECIAL_IDS:
                pieces.append(self.characters[i - NUM_SPECIAL_IDS])
            elif i == UNK_ID:
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


class SentencePieceTable:
    """A SentencePiece model's ids, as ``seqio.SentencePieceVocabulary`` (no extra ids) uses them.

    Needs only the ``sentencepiece`` package. ``describe()`` gives the record
    ``run_metadata.describe_vocabulary`` writes for the seqio vocabulary built
    on the same model bytes, so checkpoints stay interchangeable.
    """

    def __init__(self, model: bytes):
        import sentencepiece  # Here: only SentencePiece snapshots need it.

        self.model = bytes(model)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=self.model)

    @property
    def vocab_size(self) -> int:
        return self._processor.GetPieceSize()

    @property
    def eos_id(self) -> int:
        return self._processor.eos_id()

    @property
    def unk_id(self) -> int:
        return self._processor.unk_id()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def encode(self, text: str) -> list[int]:
        return list(self._processor.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.DecodeIds(
            seqio_clean_ids(ids, self.vocab_size, self.unk_id, self.eos_id))

    def describe(self) -> dict[str, Any]:
        return {"class": "SentencePieceVocabulary", "vocab_size": self.vocab_size,
                "sha256": hashlib.sha256(self.model).hexdigest()}

    def __repr__(self) -> str:
        return f"SentencePieceTable(vocab_size={self.vocab_size})"


class ByteTable:
    """UTF-8 bytes as ``seqio.ByteVocabulary`` (no extra ids) maps them: id = byte + 3.

    Ids 0, 1 and 2 are padding, EOS and UNK; decoding drops them (and ids past
    the 259), stops at the first EOS and skips invalid UTF-8, as seqio does.
    ``describe()`` gives the record ``describe_vocabulary`` writes for
    ``seqio.ByteVocabulary()``, so checkpoints stay interchangeable.
    """

    vocab_size = NUM_SPECIAL_IDS + 256
    eos_id, unk_id, pad_id = EOS_ID, UNK_ID, PAD_ID

    def encode(self, text: str) -> list[int]:
        return [byte + NUM_SPECIAL_IDS for byte in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        clean = seqio_clean_ids(ids, self.vocab_size, UNK_ID, EOS_ID)
        return bytes(i - NUM_SPECIAL_IDS for i in clean if i >= NUM_SPECIAL_IDS).decode(
            "utf-8", errors="ignore")

    def describe(self) -> dict[str, Any]:
        return {"class": "ByteVocabulary", "vocab_size": self.vocab_size}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTable)

    def __hash__(self) -> int:
        return hash(ByteTable)

    def __repr__(self) -> str:
        return "ByteTable()"


Table = CharacterTable | SentencePieceTable | ByteTable


def table_of(vocabulary: Any, task_name: str) -> Table:
    """The seqio-free table of a task's vocabulary, or a UserError naming what is supported."""
    table = getattr(vocabulary, "table", vocabulary)
    if isinstance(table, (CharacterTable, SentencePieceTable, ByteTable)):
        return table
    model = getattr(vocabulary, "sp_model", None)  # seqio.SentencePieceVocabulary's bytes.
    if isinstance(model, bytes) and not getattr(vocabulary, "extra_ids", 0):
        return SentencePieceTable(model)
    seqio = sys.modules.get("seqio")  # A seqio vocabulary means seqio is imported.
    if (seqio is not None and isinstance(vocabulary, seqio.ByteVocabulary)
            and not vocabulary.extra_ids):
        return ByteTable()
    raise UserError(
        f"task {task_name!r} uses {type(vocabulary).__name__}"
        f"{' with extra ids' if getattr(vocabulary, 'extra_ids', 0) else ''}; split snapshots "
        "support character, byte and SentencePiece vocabularies without extra ids, so train "
        "this task on a host with seqio and TensorFlow (leave LMBatches.snapshot_dir unset).")


def table_record(table: Table) -> dict[str, str]:
    """A JSON-able record of ``table`` that :func:`table_from_record` rebuilds."""
    if isinstance(table, CharacterTable):
        return {"kind": "characters", "json": table.to_json()}
    if isinstance(table, ByteTable):
        return {"kind": "bytes"}
    import base64

    return {"kind": "sentencepiece", "model_base64": base64.b64encode(table.model).decode("ascii")}


def table_from_record(record: dict[str, str], source: str) -> Table:
    """Rebuilds a table from :func:`table_record`; ``source`` names the file in errors."""
    kind = record.get("kind")
    if kind == "characters":
        return CharacterTable.from_json(record["json"], f"{source} vocabulary")
    if kind == "bytes":
        return ByteTable()
    if kind == "sentencepiece":
        import base64

        return SentencePieceTable(base64.b64decode(record["model_base64"]))
    raise ValueError(f"unknown vocabulary kind {kind!r}")
