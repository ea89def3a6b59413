"""CoNLL-2003 English NER as token classification over WordPiece sub-tokens.

Files are the original ``eng.train`` / ``eng.testa`` / ``eng.testb``
(train / validation / test): one ``word POS chunk NER`` line per token,
blank lines between sentences, ``-DOCSTART-`` lines between documents
(skipped; 14,041 / 3,250 / 3,453 sentences remain).

**IOB1 to IOB2.** The files tag in IOB1: a chunk starts with ``I-X`` and
``B-X`` appears only where a chunk follows another chunk of the same type.
IOB2 starts every chunk with ``B-``. :func:`iob1_to_iob2` rewrites ``I-X``
as ``B-X`` when it starts a chunk, that is when the previous tag of the
sentence is ``O``, of another type (``B-Y``/``I-Y``, Y != X), or there is no
previous tag; ``B-X`` and ``O`` are kept. Sentences are converted on their own.

**Labels on first sub-tokens.** A sentence becomes ``[CLS] pieces [SEP]``
(words tokenized as by ``BertTokenizerFast(is_split_into_words=True)``);
the first piece of each word carries the word's IOB2 label id and weight 1;
its other pieces, [CLS] and [SEP] carry label 0 and weight 0::

    input_ids       int32   [L]
    token_type_ids  int32   [L]  zeros
    labels          int32   [L]  index into LABELS at first pieces, 0 elsewhere
    label_weights   float32 [L]  1.0 at first pieces, 0.0 elsewhere
    words           str          the sentence's words, space-joined
    word_tags       str          their IOB2 tags, space-joined

So the k-th position with weight 1 is word k. Evaluation turns per-token
predictions back into one tag per word with :func:`word_tags_from_tokens`;
words whose first piece was cut away by the sequence length are predicted
``O`` (the gold ``word_tags`` are never cut), so the F1 is over all words. A
word that the tokenizer turns into no piece at all (none in CoNLL-2003)
gets one ``[UNK]`` so every word keeps a position.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from llmos_jax.data.data_dir import resolve_data_path
from llmos_jax.data.records import Malformed, RecordFormat, read_records
from llmos_jax.data.wordpiece_tokenizer import WordPieceTokenizer

LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
"""The 9 IOB2 tags; a label id is an index into this tuple (Hugging Face's conll2003 order)."""
LABEL_IDS = {tag: index for index, tag in enumerate(LABELS)}
ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")
SPLIT_FILES = {"train": "conll2003/eng.train", "validation": "conll2003/eng.testa",
               "test": "conll2003/eng.testb"}
"""Split name to its file, relative to the data directory."""
DOCSTART = "-DOCSTART-"
_IOB1_TAGS = frozenset({"O", *(f"{p}-{t}" for p in "IB" for t in ENTITY_TYPES)})


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """One sentence's IOB1 tags as IOB2 (see the module docstring for the rule)."""
    converted = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            converted.append("B-" + tag[2:])
        else:
            converted.append(tag)
        previous = tag
    return converted


@dataclasses.dataclass(frozen=True)
class ConllSentences(RecordFormat):
    """A CoNLL-2003 file as sentence records: ``{"words": "w1 w2 ...", "tags": "t1 t2 ..."}``.

    Tags are kept as in the file (IOB1). A line without 4 space-separated
    columns, or with an NER tag outside IOB1's ``O``/``I-X``/``B-X`` for the
    four types, makes its sentence malformed; its location is that line.
    """

    @property
    def features(self) -> tuple[str, ...]:
        return ("words", "tags")

    def parse(self, path: pathlib.Path, data: bytes) -> Iterator[tuple[str, dict | Malformed]]:
        words: list[str] = []
        tags: list[str] = []
        start: str | None = None  # Location of the sentence's first line.
        problem: tuple[str, Malformed] | None = None  # The sentence's first bad line.
        for number, raw in enumerate(data.split(b"\n"), start=1):
            raw = raw.rstrip(b"\r")
            if not raw.strip():  # A blank line ends the sentence, if any.
                if start is not None:
                    yield problem or (start, {"words": " ".join(words), "tags": " ".join(tags)})
                words, tags, start, problem = [], [], None, None
                continue
            where = f"{path}:{number}"
            bad = _line_problem(raw)
            if bad is None and raw.split(b" ")[0] == DOCSTART.encode():
                continue
            start = start or where
            if bad is not None:
                problem = problem or (where, bad)
                continue
            word, _, _, tag = raw.decode("utf-8").split(" ")
            words.append(word)
            tags.append(tag)
        if start is not None:
            yield problem or (start, {"words": " ".join(words), "tags": " ".join(tags)})


def _line_problem(raw: bytes) -> Malformed | None:
    """Why a non-blank CoNLL line is malformed, or None."""
    try:
        columns = raw.decode("utf-8").split(" ")
    except UnicodeDecodeError as error:
        return Malformed(f"invalid UTF-8 ({error.reason} at byte {error.start})")
    if len(columns) != 4:
        return Malformed(f"{len(columns)} space-separated columns, expected 4 (word POS chunk NER)")
    if columns[0] != DOCSTART and columns[3] not in _IOB1_TAGS:
        return Malformed(f"NER tag {columns[3]!r}, expected O or I-/B- of {'/'.join(ENTITY_TYPES)}")
    return None


def read_conll(path: pathlib.Path, *, strict: bool = True,
               setting: str = "register_conll2003_minilm.strict"
               ) -> list[tuple[list[str], list[str]]]:
    """``(words, IOB2 tags)`` of each sentence of a CoNLL-2003 file, ``-DOCSTART-`` skipped."""
    records = read_records(path, ConllSentences(), strict=strict, setting=setting).records
    return [(r["words"].split(" "), iob1_to_iob2(r["tags"].split(" "))) for r in records]


def align_labels(words: Sequence[str], tags: Sequence[str], pieces: Sequence[int],
                 word_ids: Sequence[int], tokenizer: WordPieceTokenizer) -> dict:
    """One token-classification example (see the module docstring) from a tokenized sentence.

    Args:
      words: the sentence's words.
      tags: their IOB2 tags.
      pieces: the pieces of all words, without [CLS]/[SEP].
      word_ids: for each piece, the index of its word.
      tokenizer: gives the [CLS], [SEP] and [UNK] ids.
    """
    by_word: list[list[int]] = [[] for _ in words]
    for piece, word in zip(pieces, word_ids):
        by_word[word].append(piece)
    input_ids, labels, weights = [tokenizer.cls_id], [0], [0.0]
    for word_pieces, tag in zip(by_word, tags):
        word_pieces = word_pieces or [tokenizer.unk_id]
        input_ids += word_pieces
        labels += [LABEL_IDS[tag]] + [0] * (len(word_pieces) - 1)
        weights += [1.0] + [0.0] * (len(word_pieces) - 1)
    input_ids.append(tokenizer.sep_id)
    labels.append(0)
    weights.append(0.0)
    ids = np.array(input_ids, np.int32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
            "labels": np.array(labels, np.int32), "label_weights": np.array(weights, np.float32),
            "words": " ".join(words), "word_tags": " ".join(tags)}


def conll_examples(sentences: Sequence[tuple[list[str], list[str]]],
                   tokenizer: WordPieceTokenizer) -> list[dict]:
    """Token-classification examples of ``(words, IOB2 tags)`` sentences."""
    encoded = tokenizer.encode_words_batch([words for words, _ in sentences])
    return [align_labels(words, tags, pieces, word_ids, tokenizer)
            for (words, tags), (pieces, word_ids) in zip(sentences, encoded)]


def load_conll2003(split: str, tokenizer: WordPieceTokenizer, *,
                   files: dict[str, str] | None = None, strict: bool = True) -> list[dict]:
    """The examples of ``split`` (``train``, ``validation`` or ``test``).

    Args:
      split: a key of ``files``.
      tokenizer: the WordPiece tokenizer (MiniLM's for ``conll2003_minilm``).
      files: split to file, relative to the data directory; default :data:`SPLIT_FILES`.
      strict: fail on a malformed line instead of skipping its sentence.
    """
    files = SPLIT_FILES if files is None else files
    path = resolve_data_path(files[split], f"register_conll2003_minilm.{split}")
    return conll_examples(read_conll(path, strict=strict), tokenizer)


def word_tags_from_tokens(predicted_label_ids: Sequence[int], label_weights: Sequence[float],
                          num_words: int) -> list[str]:
    """One predicted IOB2 tag per word, from per-token label ids of one (possibly cut) row.

    The k-th position with weight > 0 is word k; words beyond the row (cut by
    the sequence length) are ``O``. Padding positions have weight 0 and are ignored.
    """
    firsts = [int(p) for p, w in zip(predicted_label_ids, label_weights) if w > 0]
    tags = [LABELS[p] for p in firsts[:num_words]]
    return tags + ["O"] * (num_words - len(tags))
