"""The default corpus: the running interpreter's own standard-library sources.

Every machine that can run llmos_jax has a Python standard library on disk, so
a corpus built from it needs no download and no network, which makes the
default experiment runnable anywhere. Its contents depend on the Python build,
so it is reproducible per interpreter, not across interpreters.

Each file is one document. Files are taken in sorted relative-path order (POSIX
separators) and a ``max_bytes`` cap keeps a prefix of that order, so the same
interpreter always yields the same corpus. The train/validation split is decided
per file by a stable hash of its relative path, so the held-out files never
appear in train and do not move when the cap or the file set changes elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sysconfig
import zlib
from collections.abc import Iterator

from llmos_jax.errors import UserError

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
"""Default cap on corpus size, in UTF-8 bytes over both splits."""

TEXT_SUFFIXES = frozenset({".py", ".txt", ".rst", ".md"})
"""Sources plus the plain-text docs some stdlib packages ship."""

EXCLUDED_DIR_NAMES = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
)
"""Third-party packages, test suites (huge, repetitive fixtures), the IDLE GUI
and bytecode caches are not representative library source."""

SPLITS = ("train", "validation")
VALIDATION_BUCKETS = 20
"""A file is held out when ``crc32(relpath) % VALIDATION_BUCKETS == 0`` (~5%)."""


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    """One document of the corpus: its POSIX relative path and its text."""

    relpath: str
    text: str

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def default_stdlib_dir() -> pathlib.Path:
    """The standard-library directory of the running interpreter."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str) -> str:
    """The split ("train" or "validation") a file belongs to, from its path alone."""
    held_out = zlib.crc32(relpath.encode("utf-8")) % VALIDATION_BUCKETS == 0
    return "validation" if held_out else "train"


def _candidate_relpaths(root: pathlib.Path) -> list[str]:
    """Text-suffixed files under ``root`` outside excluded dirs, sorted."""
    relpaths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIR_NAMES]
        for filename in filenames:
            if pathlib.PurePath(filename).suffix in TEXT_SUFFIXES:
                full = pathlib.Path(dirpath, filename)
                relpaths.append(full.relative_to(root).as_posix())
    return sorted(relpaths)


def _read_text(path: pathlib.Path) -> str | None:
    """The file's text, or None when it is binary, undecodable or blank."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def corpus_files(
    root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> list[CorpusFile]:
    """All corpus documents of both splits, in deterministic order.

    Args:
      root: directory to read; defaults to the interpreter's stdlib.
      max_bytes: keep the longest sorted prefix of files whose UTF-8 sizes sum
        to at most this many bytes.

    Raises:
      UserError: ``root`` is missing or holds no usable text file, or
        ``max_bytes`` is too small for even the first file.
    """
    root = default_stdlib_dir() if root is None else pathlib.Path(root)
    if not root.is_dir():
        raise UserError(
            f"Standard-library directory {str(root)!r} does not exist; pass an "
            "existing directory as `root` (gin: register_stdlib_task.root)."
        )
    if max_bytes <= 0:
        raise UserError(
            f"max_bytes={max_bytes} must be positive; set a positive cap "
            "(gin: register_stdlib_task.max_bytes)."
        )
    files: list[CorpusFile] = []
    total = 0
    for relpath in _candidate_relpaths(root):
        text = _read_text(root / relpath)
        if text is None:
            continue
        document = CorpusFile(relpath, text)
        if total + document.num_bytes > max_bytes:
            break
        files.append(document)
        total += document.num_bytes
    if not files:
        raise UserError(
            f"No text files (suffixes {sorted(TEXT_SUFFIXES)}) fit in max_bytes="
            f"{max_bytes} under {str(root)!r}; point `root` at a directory of "
            "text sources or raise `max_bytes` (gin: register_stdlib_task.*)."
        )
    return files


def documents(
    split: str,
    root: str | os.PathLike | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[str]:
    """The text of each file in ``split``, one file per document.

    The corpus is read eagerly so that bad arguments fail here, not at the
    first ``next()``.

    Raises:
      UserError: ``split`` is not one of :data:`SPLITS`, or see
        :func:`corpus_files`.
    """
    if split not in SPLITS:
        raise UserError(f"Unknown stdlib corpus split {split!r}; use one of {SPLITS}.")
    files = corpus_files(root, max_bytes)
    return (f.text for f in files if split_of(f.relpath) == split)
