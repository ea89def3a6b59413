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
``sequence_length["targets"]`` tokens, so seqio's trimming never drops text
(the recipe is ``registry.register_lm_task``). Registration reads no data:
paths are only checked to exist.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Callable, Sequence

import gin
import seqio

from llmos_jax.data import stdlib_corpus
from llmos_jax.data.registry import register_lm_task
from llmos_jax.data.sources import FunctionSource
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
    return register_lm_task(name, FunctionSource(documents_fn, SPLITS), seqio.ByteVocabulary())


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
      UserError: ``root`` is missing (a root without usable text fails when read).
    """
    if root is not None and not pathlib.Path(root).is_dir():  # Cheap checks now, reading later.
        raise UserError(
            f"Standard-library directory {str(root)!r} does not exist; pass an existing "
            "directory as `root` (gin: register_stdlib_task.root)."
        )
    if max_bytes <= 0:
        raise UserError(f"max_bytes={max_bytes} must be positive; set a positive cap "
                        "(gin: register_stdlib_task.max_bytes).")
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
