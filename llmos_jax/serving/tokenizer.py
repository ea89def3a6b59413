"""`TextTokenizer`s over the two kinds of tokenizer a served model comes with.

- `VocabularyTokenizer`: a seqio vocabulary (bytes, characters, SentencePiece,
  WordPiece), what our own exports carry (`data.vocabulary_files`).
- `HfTokenizer`: a Hugging Face `tokenizers.Tokenizer` from `tokenizer.json`,
  what a Hugging Face model directory carries.

Both decode a prefix that ends inside a multi-byte character to text ending in
U+FFFD (the streaming layer holds it back until the character completes).
seqio's byte vocabulary drops such bytes instead, so `VocabularyTokenizer`
decodes bytes itself.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from llmos_jax.errors import UserError

__all__ = ["HfTokenizer", "VocabularyTokenizer", "load_hf_tokenizer", "read_tokenizer_config",
           "special_token_text", "TOKENIZER_FILE", "TOKENIZER_CONFIG_FILE"]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# seqio.ByteVocabulary's ids: 0 pad, 1 EOS, 2 UNK, then the 256 bytes, then extra ids.
_BYTE_OFFSET, _BYTE_COUNT = 3, 256


def _is_byte_vocabulary(vocabulary: Any) -> bool:
    # Not imported here: a vocabulary can only be a seqio one once seqio is imported.
    seqio = sys.modules.get("seqio")
    return seqio is not None and isinstance(vocabulary, seqio.ByteVocabulary)


class VocabularyTokenizer:
    """A seqio vocabulary (or a seqio-free table from `data.vocabulary_tables`) as a tokenizer.

    `encode` adds nothing (no EOS; `ServedModel.encode_prompt` appends it where
    the task did); `decode` stops at EOS as seqio does, and gives U+FFFD for an
    incomplete UTF-8 character of a byte vocabulary.

    Args:
      vocabulary: Decodes outputs; has `encode`, `decode`, `vocab_size` and `eos_id`.
      inputs: Encodes prompts when the task's inputs vocabulary differs (None:
        `vocabulary`).
    """

    def __init__(self, vocabulary: Any, *, inputs: Any = None):
        self.vocabulary = vocabulary
        self.inputs = vocabulary if inputs is None else inputs
        self._bytes = _is_byte_vocabulary(vocabulary)

    @property
    def vocab_size(self) -> int:
        return int(self.vocabulary.vocab_size)

    @property
    def eos_id(self) -> int | None:
        eos = getattr(self.vocabulary, "eos_id", None)
        return None if eos is None else int(eos)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text` (`add_special_tokens` is accepted for symmetry; there are none)."""
        del add_special_tokens
        return [int(i) for i in self.inputs.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        if not self._bytes:
            return self.vocabulary.decode([int(i) for i in ids])
        data = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if _BYTE_OFFSET <= i < _BYTE_OFFSET + _BYTE_COUNT:
                data.append(i - _BYTE_OFFSET)
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"VocabularyTokenizer({self.vocabulary})"


class HfTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` as a `TextTokenizer`.

    Args:
      tokenizer: The loaded tokenizer.
      source: Where it was read from, for messages.
    """

    def __init__(self, tokenizer: Any, *, source: str = ""):
        self.tokenizer = tokenizer
        self.source = source

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text`; with `add_special_tokens`, the tokenizer's post-processor
        adds its own (T5's `</s>`, Llama's BOS), as `transformers` does for a plain prompt.
        A rendered chat template already holds them: encode it with False."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens left out."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_id(self, token: str | None) -> int | None:
        """The id of `token` (None when it is not in the vocabulary)."""
        return None if token is None else self.tokenizer.token_to_id(token)

    def token_text(self, index: int | None) -> str | None:
        """The token string of `index` (None when out of range)."""
        return None if index is None else self.tokenizer.id_to_token(int(index))

    def __repr__(self) -> str:
        return f"HfTokenizer({self.source or 'in memory'}, vocab_size={self.vocab_size})"


def load_hf_tokenizer(path: str | os.PathLike) -> HfTokenizer:
    """The tokenizer in `path` (a `tokenizer.json`, or a folder holding one).

    Raises:
      UserError: no such file, a file `tokenizers` cannot read, or the package missing.
    """
    path = pathlib.Path(path).expanduser()
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file} does not exist; a Hugging Face model folder needs its fast "
                        "tokenizer saved beside it (tokenizer.save_pretrained(folder) writes "
                        f"{TOKENIZER_FILE}).")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("reading tokenizer.json needs the tokenizers package: "
                        "pip install 'llmos_jax[serve]'.") from None
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as error:  # tokenizers raises a bare Exception for a malformed file.
        raise UserError(f"{file} is not a tokenizer file `tokenizers` can read ({error}); "
                        "save it again with a fast tokenizer's save_pretrained.") from None
    return HfTokenizer(tokenizer, source=str(file))


def special_token_text(value: Any) -> str | None:
    """A `tokenizer_config.json` special token (`"</s>"` or `{"content": "</s>", ...}`) as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_tokenizer_config(directory: str | os.PathLike) -> dict[str, Any]:
    """A Hugging Face folder's `tokenizer_config.json` ({} when it has none).

    Raises:
      UserError: the file is not a JSON object.
    """
    path = pathlib.Path(directory) / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not readable JSON ({error}); save the tokenizer again "
                        "(tokenizer.save_pretrained(folder)).") from None
    if not isinstance(content, dict):
        raise UserError(f"{path} must hold a JSON object, found {type(content).__name__}.")
    return content
