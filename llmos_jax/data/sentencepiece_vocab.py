"""Training SentencePiece models for seqio, and loading them as vocabularies.

Models are trained with seqio's id layout (0 pad, 1 EOS, 2 UNK, no BOS) so
``seqio.SentencePieceVocabulary`` uses them as is and packing and loss masks
behave as with the byte vocabulary.

Defaults chosen for exact round trips of mixed Chinese and English text:

- ``character_coverage=0.9995``: SentencePiece's recommendation for
  languages with rich character sets (Chinese, Japanese); the rarest 0.05% of
  characters become UNK. Use ``1.0`` for small alphabets (English, code), or
  ``byte_fallback=True`` to spell rare characters as UTF-8 bytes instead.
- ``normalization="identity"`` and no whitespace squeezing: the default NFKC
  rule would turn full-width punctuation (``，`` ``。``) into ASCII and merge
  spaces, so decoding would not give back the text.
- ``"\\n"`` is a user-defined piece, so documents keep their line breaks (the
  trainer reads one sentence per line and would never see one otherwise).
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable, Iterator

import gin
import seqio

from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.data")

MODEL_TYPES = ("unigram", "bpe")
DEFAULT_CHARACTER_COVERAGE = 0.9995
LINE_BREAK_PIECE = "\n"


@gin.configurable
def sentencepiece_vocabulary(model_path: str | os.PathLike) -> seqio.SentencePieceVocabulary:
    """A seqio vocabulary over a trained ``.model`` file (loaded lazily, on first use).

    Relative paths are taken from the current directory, like ``--output`` of
    ``llmos vocab train``.
    """
    return seqio.SentencePieceVocabulary(str(pathlib.Path(model_path).expanduser().resolve()))


def require_model_file(model_path: str | os.PathLike, setting: str) -> pathlib.Path:
    """The model path, checked to exist, so a missing model fails with a fix, not a TF error."""
    path = pathlib.Path(model_path).expanduser().resolve()
    if not path.is_file():
        raise UserError(
            f"{setting}={str(model_path)!r}: SentencePiece model {str(path)!r} does not exist; "
            "train one with `llmos vocab train --input=FILE --vocab_size=N --output=PREFIX` "
            f"and set {setting} to PREFIX.model."
        )
    return path


def _lines(texts: Iterable[str], max_sentences: int) -> Iterator[str]:
    """Non-blank lines of ``texts``, at most ``max_sentences`` of them."""
    count = 0
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line
                count += 1
                if count >= max_sentences:
                    return


def train_sentencepiece(
    texts: Iterable[str],
    output_prefix: str | os.PathLike,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
    byte_fallback: bool = False,
    max_sentences: int = 10_000_000,
    num_threads: int | None = None,
) -> pathlib.Path:
    """Trains a model on the lines of ``texts``; writes ``PREFIX.model`` and ``PREFIX.vocab``.

    Args:
      texts: documents; each non-blank line is one training sentence.
      output_prefix: path prefix of the two output files (folders are created).
      vocab_size: pieces in the model, including the 3 special ids and ``"\\n"``.
      model_type: ``"unigram"`` or ``"bpe"``.
      character_coverage: share of characters kept as pieces (see module doc).
      byte_fallback: spell characters outside the model as UTF-8 byte pieces.
      max_sentences: read at most this many lines (the first ones).
      num_threads: trainer threads; defaults to the CPU count.

    Returns:
      The path of the ``.model`` file.

    Raises:
      UserError: a bad argument, no text, or a ``vocab_size`` the text cannot fill.
    """
    import sentencepiece  # Heavy native module: only when training.

    if model_type not in MODEL_TYPES:
        raise UserError(f"--model_type={model_type!r} is not one of {list(MODEL_TYPES)}.")
    if not 0.0 < character_coverage <= 1.0:
        raise UserError(f"--character_coverage={character_coverage} must be in (0, 1].")
    if vocab_size <= 4:
        raise UserError(f"--vocab_size={vocab_size} must exceed the 4 reserved pieces "
                        "(pad, EOS, UNK, line break).")
    prefix = pathlib.Path(output_prefix).expanduser()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    sentences = _lines(texts, max_sentences)
    first = next(sentences, None)
    if first is None:
        raise UserError("the training text is empty; give --input files (or a --task) with text.")

    def all_sentences() -> Iterator[str]:
        yield first
        yield from sentences

    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=all_sentences(),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            user_defined_symbols=[LINE_BREAK_PIECE],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=1,
        )
    except RuntimeError as error:
        reason = str(error).strip().rpartition("] ")[2]  # Drop the C++ file:line and check.
        raise UserError(f"SentencePiece training failed (--vocab_size={vocab_size}, "
                        f"--character_coverage={character_coverage}): {reason}") from None
    model = prefix.with_name(prefix.name + ".model")
    log.info("trained %s SentencePiece model with %d pieces: %s", model_type, vocab_size, model)
    return model
