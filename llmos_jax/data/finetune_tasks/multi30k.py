"""Multi30k (Task 1) English -> German caption pairs, as text for seq2seq.

Line ``i`` of ``{stem}.en.gz`` translates to line ``i`` of ``{stem}.de.gz``;
the stems are ``train`` (29,000 pairs), ``val`` (1,014, our validation) and
``test_2016_flickr`` (1,000, test). Each pair is ``{"inputs": English,
"targets": German}``; text is kept as in the files (no lowercasing or
tokenization), so a SentencePiece vocabulary sees the raw captions.
"""

from __future__ import annotations

import pathlib

from llmos_jax.data.data_dir import resolve_data_path
from llmos_jax.data.records import open_bytes
from llmos_jax.errors import UserError

SPLIT_STEMS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
"""Split name to the files' stem."""
DEFAULT_FOLDER = "multi30k"


def _lines(path: pathlib.Path) -> list[str]:
    """Every line of a (gzipped) UTF-8 file, without line breaks; a final empty line is dropped."""
    try:
        text = open_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: invalid UTF-8 ({error.reason} at byte {error.start}); fix the "
                        "file.") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def load_multi30k(split: str, folder: str = DEFAULT_FOLDER,
                  setting: str = "register_multi30k_en_de_spm.folder") -> list[dict[str, str]]:
    """The ``{"inputs": en, "targets": de}`` pairs of ``split``, in file order.

    Raises:
      UserError: a missing file, or English and German files of different lengths.
    """
    directory = resolve_data_path(folder, setting)
    sides = [_lines(resolve_data_path(directory / f"{SPLIT_STEMS[split]}.{language}.gz", setting))
             for language in ("en", "de")]
    if len(sides[0]) != len(sides[1]):
        raise UserError(f"multi30k split {split!r} has {len(sides[0])} English but {len(sides[1])} "
                        f"German lines; the files under {setting}={folder!r} must align.")
    return [{"inputs": en, "targets": de} for en, de in zip(*sides)]
