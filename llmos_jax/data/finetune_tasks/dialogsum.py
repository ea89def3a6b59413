"""DialogSum dialogue summarization, as text for seq2seq.

Files are JSON lines: train (``dialogsum.train.early2021.jsonl.gz``, 12,460)
and validation (``dialogsum.dev.jsonl``, 500) have one ``summary``; test
(``dialogsum.test.jsonl``, 500) has three, ``summary1``..``summary3``, for
multi-reference ROUGE. Each record becomes::

    id          str          "fname", e.g. "test_0"
    inputs      str          the dialogue ("#Person1#: ..." turns, newline-separated)
    targets     str          the summary (test: summary1, the one a model trains towards)
    references  tuple[str]   every reference summary (1, or 3 on test)

Malformed lines (bad JSON, a missing key) follow ``strict`` as in
``records.read_records``.
"""

from __future__ import annotations

from llmos_jax.data.data_dir import resolve_data_path
from llmos_jax.data.records import JsonlFormat, read_records

SPLIT_FILES = {"train": "dialogsum/dialogsum.train.early2021.jsonl.gz",
               "validation": "dialogsum/dialogsum.dev.jsonl",
               "test": "dialogsum/dialogsum.test.jsonl"}
"""Split name to its file, relative to the data directory."""
MULTI_REFERENCE_SPLITS = {"test": ("summary1", "summary2", "summary3")}
"""Splits with several summaries per dialogue, and their keys (the first is ``targets``)."""


def load_dialogsum(split: str, *, files: dict[str, str] | None = None, strict: bool = True,
                   setting: str = "register_dialogsum_spm") -> list[dict]:
    """The records of ``split`` (see the module docstring), in file order."""
    files = SPLIT_FILES if files is None else files
    path = resolve_data_path(files[split], f"{setting}.{split}")
    summaries = MULTI_REFERENCE_SPLITS.get(split, ("summary",))
    fields = {"id": "fname", "inputs": "dialogue",
              **{f"reference_{i}": key for i, key in enumerate(summaries)}}
    records = read_records(path, JsonlFormat(fields=fields), strict=strict,
                           setting=f"{setting}.strict").records
    examples = []
    for record in records:
        references = tuple(record[f"reference_{i}"] for i in range(len(summaries)))
        examples.append({"id": record["id"], "inputs": record["inputs"],
                         "targets": references[0], "references": references})
    return examples
