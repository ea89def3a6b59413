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
characters. The set is saved as a small JSON file (``{"format":
"llmos_char_vocab", "version": 1, "characters": "..."}``) so a run can be
reproduced without the corpus, and the checkpoint metadata records its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from llmos_jax.data.records import open_bytes
from llmos_jax.errors import UserError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_SPECIAL_IDS = 3
UNK_TEXT = "\ufffd"
JSON_FORMAT = "llmos_char_vocab"
JSON_VERSION = 1


def characters_of(texts: Iterable[str]) -> str:
    """The distinct characters of ``texts`` in code-point order."""
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    return "".join(sorted(seen))


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
        self._characters = characters
        self._json_path = None if json_path is None else pathlib.Path(json_path)
        self._corpus_paths = tuple(pathlib.Path(p) for p in corpus_paths)
        self._codepoints: np.ndarray | None = None
        self._ids: dict[str, int] | None = None
        if characters is not None:
            self._check(characters, "CharacterVocabulary.characters")
        super().__init__(extra_ids=0)

    @staticmethod
    def _check(characters: str, setting: str) -> None:
        if not characters or len(set(characters)) != len(characters):
            raise UserError(f"{setting} must be a non-empty string of distinct characters.")

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharacterVocabulary":
        """The vocabulary of every character in ``texts``."""
        return cls(characters_of(texts))

    @property
    def characters(self) -> str:
        """The character set, in id order (loaded on first use)."""
        if self._characters is None:
            if self._json_path is not None:
                self._characters = self._load_json(self._json_path)
            else:
                texts = []
                for path in self._corpus_paths:
                    if not path.is_file():
                        raise UserError(f"CharacterVocabulary.corpus_paths: {str(path)!r} does not "
                                        "exist; fix the path (relative ones are taken from the cwd).")
                    texts.append(open_bytes(path).decode("utf-8", errors="replace"))
                self._characters = characters_of(texts)
                self._check(self._characters, "CharacterVocabulary.corpus_paths (the files' text)")
        return self._characters

    @staticmethod
    def _load_json(path: pathlib.Path) -> str:
        setting = "CharacterVocabulary.json_path"
        if not path.is_file():
            raise UserError(f"{setting}: {str(path)!r} does not exist; write one with "
                            "CharacterVocabulary.save_json or fix the path.")
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            characters = content["characters"]
            if content.get("format") != JSON_FORMAT or not isinstance(characters, str):
                raise ValueError("not an llmos character vocabulary")
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{setting}: {str(path)!r} is not a character vocabulary file "
                            f"({error}); regenerate it with CharacterVocabulary.save_json.") from None
        CharacterVocabulary._check(characters, f"{setting} ({path})")
        return characters

    def to_json(self) -> str:
        """The canonical JSON text of this vocabulary (what :meth:`save_json` writes)."""
        return json.dumps({"format": JSON_FORMAT, "version": JSON_VERSION,
                           "characters": self.characters}, ensure_ascii=False, sort_keys=True)

    def save_json(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the character set as UTF-8 JSON and returns the path."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`to_json`: equal exactly when the id mapping is equal."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    # seqio.Vocabulary interface.

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def _base_vocab_size(self) -> int:
        return NUM_SPECIAL_IDS + len(self.characters)

    def _id_of(self) -> dict[str, int]:
        if self._ids is None:
            self._ids = {c: i + NUM_SPECIAL_IDS for i, c in enumerate(self.characters)}
        return self._ids

    def _sorted_codepoints(self) -> np.ndarray:
        if self._codepoints is None:
            self._codepoints = np.array([ord(c) for c in self.characters], np.int32)
        return self._codepoints

    def _encode(self, s: str) -> list[int]:
        ids = self._id_of()
        return [ids.get(c, UNK_ID) for c in s]

    def _decode(self, ids: Iterable[int]) -> str:
        characters = self.characters
        pieces = []
        for i in ids:
            i = int(i)
            if i >= NUM_SPECIAL_IDS:
                pieces.append(characters[i - NUM_SPECIAL_IDS])
            elif i == UNK_ID:
                pieces.append(UNK_TEXT)
        return "".join(pieces)

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
        return {**self.__dict__, "_ids": None, "_codepoints": None}

    def __str__(self) -> str:
        return f"CharacterVocabulary(vocab_size={self.vocab_size})"
