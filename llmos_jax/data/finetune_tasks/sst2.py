"""GLUE SST-2 (binary sentiment) as WordPiece classification examples.

Files are GLUE's ``sentence<TAB>label`` TSVs with a header: ``train.tsv``
(67,349 rows) is train and ``dev.tsv`` (872) is validation; GLUE's test
labels are hidden, so there is no test split. Each row becomes::

    input_ids       int32 [L]  [CLS] sentence [SEP]
    token_type_ids  int32 [L]  zeros (one segment)
    label           int32 []   0 negative, 1 positive

A row with the wrong column count or a label other than 0/1 is malformed:
``strict=True`` stops with its ``file:line``, ``strict=False`` skips and
counts it (the policy of ``records.read_records``).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from llmos_jax.data.data_dir import resolve_data_path
from llmos_jax.data.records import Malformed, TsvFormat, read_records
from llmos_jax.data.wordpiece_tokenizer import WordPieceTokenizer

SPLIT_FILES = {"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"}
"""Split name to its file, relative to the data directory."""
NUM_LABELS = 2


@dataclasses.dataclass(frozen=True)
class Sst2Format(TsvFormat):
    """GLUE SST-2 rows: ``sentence`` and a ``label`` that must be ``0`` or ``1``."""

    fields: dict = dataclasses.field(
        default_factory=lambda: {"sentence": "sentence", "label": "label"})
    header: bool = True

    def parse(self, path, data):
        for where, record in super().parse(path, data):
            if not isinstance(record, Malformed) and record["label"].strip() not in ("0", "1"):
                record = Malformed(f"label {record['label']!r}, expected 0 or 1")
            yield where, record


def read_sst2(path: pathlib.Path, *, strict: bool = True,
              setting: str = "register_sst2_minilm.strict") -> list[tuple[str, int]]:
    """``(sentence, label)`` pairs of one SST-2 TSV file, in file order."""
    records = read_records(path, Sst2Format(), strict=strict, setting=setting).records
    return [(r["sentence"], int(r["label"])) for r in records]


def sst2_examples(pairs: list[tuple[str, int]], tokenizer: WordPieceTokenizer) -> list[dict]:
    """Classification examples (see the module docstring) of ``(sentence, label)`` pairs."""
    examples = []
    for (_, label), pieces in zip(pairs, tokenizer.encode_batch([s for s, _ in pairs])):
        input_ids = np.array([tokenizer.cls_id, *pieces, tokenizer.sep_id], np.int32)
        examples.append({"input_ids": input_ids,
                         "token_type_ids": np.zeros_like(input_ids),
                         "label": np.int32(label)})
    return examples


def load_sst2(split: str, tokenizer: WordPieceTokenizer, *, files: dict[str, str] | None = None,
              strict: bool = True) -> list[dict]:
    """The examples of ``split`` (``train`` or ``validation``).

    Args:
      split: a key of ``files``.
      tokenizer: the WordPiece tokenizer (MiniLM's for ``sst2_minilm``).
      files: split to file, relative to the data directory; default :data:`SPLIT_FILES`.
      strict: fail on a malformed row instead of skipping it.
    """
    files = SPLIT_FILES if files is None else files
    path = resolve_data_path(files[split], f"register_sst2_minilm.{split}")
    return sst2_examples(read_sst2(path, strict=strict), tokenizer)
