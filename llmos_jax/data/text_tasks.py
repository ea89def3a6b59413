"""seqio Tasks for byte-level language modelling on plain text.

Each ``register_*`` function adds (or replaces) a Task in seqio's global
TaskRegistry and returns its name, so gin can both register a Task and hand
its name to the loader in one binding::

    LMBatches.task_name = @register_stdlib_task()

Registration is idempotent: registering a name again replaces the earlier Task
(seqio itself raises on duplicates), so re-running a config in the same process
works and the latest arguments win.

Every Task here has one output feature, ``targets``, tokenized with
``seqio.ByteVocabulary`` (ids = UTF-8 byte + 3; 0 pad, 1 EOS, 2 UNK). EOS is
appended once per document, then documents are cut into chunks of at most
``sequence_length["targets"]`` tokens, so seqio's trimming never drops text.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
from collections.abc import Callable, Sequence

import gin
import seqio
import tensorflow as tf

from llmos_jax.data import stdlib_corpus
from llmos_jax.data.preprocessors import chunk_tokens
from llmos_jax.errors import UserError

SPLITS = ("train", "validation")


def byte_output_features() -> dict[str, seqio.Feature]:
    """The ``targets`` feature shared by every Task in this module."""
    return {"targets": seqio.Feature(vocabulary=seqio.ByteVocabulary(), add_eos=True)}


def _register_lm_task(name: str, documents_fn: Callable[[str], Sequence[str]]) -> str:
    """Registers (replacing any previous) a byte-level LM Task over documents.

    Args:
      name: seqio Task name.
      documents_fn: split name to the list of document texts in that split.
        Called lazily, when a dataset is requested, and at most once per split.
    """

    @functools.cache
    def cached_documents(split: str) -> tuple[str, ...]:
        return tuple(documents_fn(split))

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # One in-memory shard: nothing to shuffle.
        texts = list(cached_documents(split))
        return tf.data.Dataset.from_tensor_slices(
            {"text": tf.constant(texts, dtype=tf.string, shape=[len(texts)])}
        )

    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=SPLITS),
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.preprocessors.append_eos,
            chunk_tokens,
        ],
        output_features=byte_output_features(),
    )
    return name


@gin.configurable
def register_stdlib_task(
    name: str = "stdlib_bytes",
    max_bytes: int = stdlib_corpus.DEFAULT_MAX_BYTES,
    root: str | None = None,
) -> str:
    """Registers the default corpus: this interpreter's stdlib sources, one file per document.

    Args:
      name: seqio Task name.
      max_bytes: corpus size cap over both splits (see ``stdlib_corpus``).
      root: directory to read instead of the interpreter's stdlib (tests).

    Returns:
      ``name``.

    Raises:
      UserError: ``root`` is missing or has no usable text.
    """
    stdlib_corpus.corpus_files(root, max_bytes)  # Fail now, not at first batch.
    return _register_lm_task(
        name, lambda split: list(stdlib_corpus.documents(split, root, max_bytes))
    )


def split_text(text: str, validation_fraction: float) -> dict[str, str]:
    """Cuts text into a leading train part and a trailing validation part.

    The cut lands at the first line start at or after
    ``(1 - validation_fraction)`` of the characters, so no line is split; with
    no later line break it falls at that character.
    """
    cut = int(len(text) * (1.0 - validation_fraction))
    if 0 < cut < len(text):
        newline = text.find("\n", cut - 1)
        if newline != -1:
            cut = newline + 1
    return {"train": text[:cut], "validation": text[cut:]}


def paragraphs(text: str) -> list[str]:
    """Blank-line-separated paragraphs; line breaks at either end and blank ones dropped."""
    pieces = re.split(r"\n(?:[ \t\r\f\v]*\n)+", text)
    return [piece.strip("\r\n") for piece in pieces if piece.strip()]


@gin.configurable
def register_text_file_task(
    name: str,
    path: str | os.PathLike,
    validation_fraction: float = 0.1,
) -> str:
    """Registers a Task over one UTF-8 text file, one document per paragraph.

    The file's leading ``1 - validation_fraction`` is train and the rest is
    validation (see :func:`split_text`); each part is then split into
    blank-line-separated paragraphs (see :func:`paragraphs`), each one document
    ending in EOS. Paragraphs suit plays, books and prose; a file without blank
    lines is a single document per split, chunked.

    Args:
      name: seqio Task name.
      path: the text file.
      validation_fraction: share of the text, from the end, held out.

    Returns:
      ``name``.

    Raises:
      UserError: ``path`` does not exist or ``validation_fraction`` is outside
        [0, 1).
    """
    file = pathlib.Path(path)
    if not file.is_file():
        raise UserError(
            f"Text file {str(file)!r} for task {name!r} does not exist; set `path` "
            "(gin: register_text_file_task.path) to an existing UTF-8 text file."
        )
    if not 0.0 <= validation_fraction < 1.0:
        raise UserError(
            f"validation_fraction={validation_fraction} for task {name!r} must be in "
            "[0, 1); fix gin: register_text_file_task.validation_fraction."
        )

    def documents(split: str) -> list[str]:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UserError(
                f"Text file {str(file)!r} is not valid UTF-8 ({error.reason} at byte "
                f"{error.start}); convert it to UTF-8 or point "
                "register_text_file_task.path at another file."
            ) from None
        return paragraphs(split_text(text, validation_fraction)[split])

    return _register_lm_task(name, documents)
