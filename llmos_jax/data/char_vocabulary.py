"""A character-level seqio vocabulary, defined by a corpus' own character set.

Character models (nanoGPT's ``shakespeare_char``) use exactly the characters
of their corpus, so ``vocab_size`` is small and known. Ids follow seqio's
conventions so packing, loss masking and EOS handling work unchanged:

====  =========================================================
id    meaning
====  =========================================================
0     padding (never a character)
1     EOS, appended to each document
2     UNK, any character outside the set (decodes to U+FFFD)
3...  the characters, in Unicode code-point order
====  =========================================================

So ``vocab_size == 3 + len(characters)``: 68 for tinyshakespeare's 65
characters. The mapping itself lives in ``vocabulary_tables.CharacterTable``,
which needs neither seqio nor TensorFlow. The set is saved as a small JSON file (``{"format":
"llmos_char_vocab", "version": 1, "characters": "..."}``) so a run can be
reproduced without the corpus, and the checkpoint metadata records its hash.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf

import gin
from llmos_jax.data.records import open_bytes
from llmos_jax.data.vocabulary_tables import (  # noqa: F401 (re-exported constants)
    EOS_ID,
    NUM_SPECIAL_IDS,
    PAD_ID,
    UNK_ID,
    UNK_TEXT,
    CharacterTable,
    characters_of,
    check_characters,
    parse_json,
)
from llmos_jax.errors import UserError


@gin.configurable
class CharacterVocabulary(seqio.Vocabulary):
    """One id per character of a fixed set; see the module docstring for the id layout.

    The set comes from exactly one of: ``characters``; ``json_path``, a file
    written by :meth:`save_json`; or ``corpus_paths``, text files (gzipped or
    not) whose characters form the set. Files are read lazily, on first use,
    so registering a Task that uses this vocabulary is free.
    """

    def __init__(self, characters: str | None = None, *, json_path: str | os.PathLike | None = None,
                 corpus_paths: Sequence[str | os.PathLike] = ()):
        given = [characters is not None, json_path is not None, bool(corpus_paths)]
        if sum(given) != 1:
            raise UserError(
                "CharacterVocabulary needs exactly one of characters, json_path or corpus_paths "
                f"(got {sum(given)}); set one in gin (e.g. CharacterVocabulary.json_path)."
            )
        if characters is not None:
            check_characters(characters, "CharacterVocabulary.characters")
        self._table = None if characters is None else CharacterTable(characters)
        self._json_path = None if json_path is None else pathlib.Path(json_path)
        self._corpus_paths = tuple(pathlib.Path(p) for p in corpus_paths)
        self._codepoints: np.ndarray | None = None
        super().__init__(extra_ids=0)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharacterVocabulary:
        """The vocabulary of every character in ``texts``."""
        return cls(characters_of(texts))

    @property
    def table(self) -> CharacterTable:
        """The id mapping (loaded on first use)."""
        if self._table is None:
            if self._json_path is not None:
                self._table = CharacterTable(self._load_json(self._json_path))
            else:
                texts = []
                for path in self._corpus_paths:
                    if not path.is_file():
                        raise UserError(f"CharacterVocabulary.corpus_paths: {str(path)!r} does not "
                                        "exist; fix the path (relative ones are taken from the cwd).")
                    texts.append(open_bytes(path).decode("utf-8", errors="replace"))
                characters = characters_of(texts)
                check_characters(characters, "CharacterVocabulary.corpus_paths (the files' text)")
                self._table = CharacterTable(characters)
        return self._table

    @property
    def characters(self) -> str:
        """The character set, in id order."""
        return self.table.characters

    @staticmethod
    def _load_json(path: pathlib.Path) -> str:
        setting = "CharacterVocabulary.json_path"
        if not path.is_file():
            raise UserError(f"{setting}: {str(path)!r} does not exist; write one with "
                            "CharacterVocabulary.save_json or fix the path.")
        return parse_json(path.read_text(encoding="utf-8"), f"{setting}: {str(path)!r}")

    def to_json(self) -> str:
        """The canonical JSON text of this vocabulary (what :meth:`save_json` writes)."""
        return self.table.to_json()

    def save_json(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the character set as UTF-8 JSON and returns the path."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`to_json`: equal exactly when the id mapping is equal."""
        return self.table.fingerprint()

    def describe(self) -> dict:
        """The checkpoint-metadata record, the same as the bare table's."""
        return self.table.describe()

    # seqio.Vocabulary interface.

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def _base_vocab_size(self) -> int:
        return self.table.vocab_size

    def _sorted_codepoints(self) -> np.ndarray:
        if self._codepoints is None:
            self._codepoints = np.array([ord(c) for c in self.characters], np.int32)
        return self._codepoints

    def _encode(self, s: str) -> list[int]:
        return self.table.encode(s)

    def _decode(self, ids: Iterable[int]) -> str:
        return self.table.decode_pieces(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        codepoints = tf.strings.unicode_decode(s, "UTF-8", errors="replace")
        table = tf.constant(self._sorted_codepoints())
        # Code points are sorted, so a binary search finds each one's id.
        flat = codepoints.flat_values if isinstance(codepoints, tf.RaggedTensor) else codepoints
        index = tf.searchsorted(table, flat, side="left")
        found = tf.gather(table, tf.minimum(index, tf.size(table) - 1)) == flat
        ids = tf.where(found, tf.cast(index, tf.int32) + NUM_SPECIAL_IDS, UNK_ID)
        if isinstance(codepoints, tf.RaggedTensor):
            return codepoints.with_flat_values(ids)
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(ids, tf.int32)
        # Row 0 is UNK's text; row k >= 1 is the character of id k + 2.
        table = tf.constant(np.concatenate([[ord(UNK_TEXT)], self._sorted_codepoints()]), tf.int32)
        codepoints = tf.gather(table, tf.maximum(ids - UNK_ID, 0))
        kept = tf.ragged.boolean_mask(codepoints, ids >= UNK_ID)
        return tf.strings.unicode_encode(kept, "UTF-8")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharacterVocabulary) and self.characters == other.characters

    def __hash__(self) -> int:
        return hash(self.characters)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_codepoints": None}

    def __str__(self) -> str:
        return f"CharacterVocabulary(vocab_size={self.vocab_size})"
