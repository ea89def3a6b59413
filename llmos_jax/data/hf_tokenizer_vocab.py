"""A Hugging Face ``tokenizer.json`` as a ``seqio.Vocabulary``.

Tokenization is the ``tokenizers`` library's own, so ids equal those of the
model's ``PreTrainedTokenizerFast`` (Llama, Mistral, Qwen2, Gemma, GPT-2 ...).
Special tokens come from ``tokenizer_config.json`` beside the file:

- ``eos_id`` is ``eos_token``'s id: a seqio feature with ``add_eos=True``
  ends each text with it, and decoding stops there;
- ``add_bos_token`` (Llama, Gemma: true) puts ``bos_token`` before every
  encoded text, as the model was trained; ``add_bos`` overrides it;
- ``encode`` adds no other special token (the tokenizer's post-processor is
  not run; seqio adds EOS itself), while special tokens written in the text
  (``<|im_start|>``, ``[INST]`` ...) become their single ids;
- ``decode`` drops special tokens;
- ``pad_id`` is seqio's 0 (padding is masked by the feature converters).

The TF encode/decode run the same tokenizer through ``tf.numpy_function``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
from tokenizers import Tokenizer, processors

import gin
from llmos_jax.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _token_text(value: Any) -> str | None:
    """A tokenizer_config.json special token: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@gin.configurable
class HfTokenizerVocabulary(seqio.Vocabulary):
    """seqio vocabulary over a ``tokenizer.json`` (see the module docstring for ids)."""

    def __init__(self, path: str | os.PathLike, *, add_bos: bool | None = None,
                 bos_token: str | None = None, eos_token: str | None = None):
        """Args:
          path: A model folder holding ``tokenizer.json`` (and usually
            ``tokenizer_config.json``), or the ``tokenizer.json`` itself.
          add_bos: Put BOS before each text; None: ``tokenizer_config.json``'s
            ``add_bos_token`` (false when absent).
          bos_token, eos_token: Override ``tokenizer_config.json``'s.

        Raises:
          UserError: the file is missing or not a tokenizer, or the EOS token
            is unknown to it.
        """
        given = pathlib.Path(path).expanduser()
        file = given / TOKENIZER_FILE if given.is_dir() else given
        if not file.is_file():
            raise UserError(f"HfTokenizerVocabulary.path={str(path)!r}: {file} does not exist; "
                            f"pass a Hugging Face model folder with {TOKENIZER_FILE}.")
        self._json = file.read_bytes()
        try:
            self._tokenizer = Tokenizer.from_str(self._json.decode("utf-8"))
        except Exception as error:  # tokenizers raises a bare Exception on bad files
            raise UserError(f"{file} is not a Hugging Face tokenizer.json ({error}); "
                            "save it with tokenizer.save_pretrained.") from None
        config_file = file.parent / TOKENIZER_CONFIG_FILE
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self._bos_token = bos_token or _token_text(config.get("bos_token"))
        self._eos_token = eos_token or _token_text(config.get("eos_token"))
        self._add_bos = bool(config.get("add_bos_token", False)) if add_bos is None else add_bos
        self._file = file
        if self._eos_token is None or self._tokenizer.token_to_id(self._eos_token) is None:
            raise UserError(f"{file}: the EOS token {self._eos_token!r} (tokenizer_config.json "
                            "eos_token) is not in the tokenizer; set "
                            "HfTokenizerVocabulary.eos_token to one of its special tokens.")
        if self._add_bos and (self._bos_token is None
                              or self._tokenizer.token_to_id(self._bos_token) is None):
            raise UserError(f"{file}: add_bos needs a BOS token the tokenizer knows, got "
                            f"{self._bos_token!r}; set HfTokenizerVocabulary.bos_token.")
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def tokenizer_json(self) -> bytes:
        """The file's bytes (written with exports)."""
        return self._json

    @property
    def settings(self) -> dict[str, Any]:
        """What, beside the file, fixes the ids: for exports and the fingerprint."""
        return {"add_bos": self._add_bos, "bos_token": self._bos_token,
                "eos_token": self._eos_token}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json`` into `directory`.

        ``transformers.AutoTokenizer.from_pretrained(directory)`` then loads a
        fast tokenizer whose default encoding (``add_special_tokens=True``, as
        lm-evaluation-harness and pipelines call it) gives exactly `encode`'s
        ids, BOS included (put the folder beside an exported model's
        ``config.json``). transformers' generic fast tokenizer ignores
        ``add_bos_token``; it runs the file's post-processor, so where that
        does not already add the BOS alone, the written file gets one that does.
        """
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_FILE).write_bytes(self._json_for_transformers())
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self._bos_token,
                  "eos_token": self._eos_token, "add_bos_token": self._add_bos,
                  "add_eos_token": False}
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def fingerprint(self) -> str:
        """SHA-256 of the file and the BOS/EOS settings."""
        digest = hashlib.sha256(self._json)
        digest.update(json.dumps(self.settings, sort_keys=True).encode())
        return digest.hexdigest()

    def _json_for_transformers(self) -> bytes:
        """The file, with a post-processor that adds what `encode` adds (BOS or nothing)."""
        probe = "a b"
        plain = self._tokenizer.encode(probe, add_special_tokens=False).ids
        wanted = [self.bos_id] if self._add_bos else []
        if self._tokenizer.encode(probe).ids == wanted + plain:
            return self._json
        tokenizer = Tokenizer.from_str(self._json.decode("utf-8"))
        prefix = f"{self._bos_token} " if self._add_bos else ""
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{prefix}$A", pair=f"{prefix}$A {prefix}$B:1",
            special_tokens=[(self._bos_token, self.bos_id)] if self._add_bos else [])
        return tokenizer.to_str(pretty=True).encode("utf-8")

    @property
    def bos_id(self) -> int | None:
        return None if self._bos_token is None else self._tokenizer.token_to_id(self._bos_token)

    @property
    def eos_id(self) -> int:
        return self._tokenizer.token_to_id(self._eos_token)

    @property
    def unk_id(self) -> int | None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> list[int]:
        return self._encode_batch([s])[0]

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        prefix = [self.bos_id] if self._add_bos else []
        return [prefix + encoding.ids for encoding in
                self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode_numpy(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            texts = np.asarray(texts, dtype=object).reshape(-1)  # a scalar string is bytes
            pieces = self._encode_batch([t.decode("utf-8") for t in texts])
            flat = np.array([i for p in pieces for i in p], np.int32)
            return flat, np.array([len(p) for p in pieces], np.int64)

        flat, lengths = tf.numpy_function(encode_numpy, [s], (tf.int32, tf.int64), stateful=False)
        flat.set_shape([None])
        ragged = tf.RaggedTensor.from_row_lengths(flat, tf.reshape(lengths, [-1]))
        return ragged[0] if s.shape.rank == 0 else ragged

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode_numpy(rows: np.ndarray) -> np.ndarray:
            flat = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 1)
            texts = [self._decode(row).encode("utf-8") for row in flat]
            return np.array(texts, object).reshape(rows.shape[:-1])

        texts = tf.numpy_function(decode_numpy, [ids], tf.string, stateful=False)
        texts.set_shape(ids.shape[:-1])
        return texts

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, HfTokenizerVocabulary)
                and self.fingerprint() == other.fingerprint())

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __str__(self) -> str:
        return f"HfTokenizerVocabulary({self._file}, vocab_size={self.vocab_size})"
