"""The vocabularies a model was trained with: read from its Task, written as files, read back.

An export (`model_dir/export`, `model_dir/best`) must encode prompts and decode
outputs with no gin file and no registered seqio Task (`llmos serve`). So it
carries its vocabularies: `vocabulary_files` turns them into files plus a
manifest that goes in the export's `meta.json` (under `"vocabularies"`), and
`read_vocabularies` turns them back into seqio vocabularies.

One manifest entry per feature (`inputs` encodes prompts, `outputs` decodes
generations; one file serves both when they are the same vocabulary):

============  ==============================================================
kind          what is stored
============  ==============================================================
bytes         nothing but `extra_ids` (`seqio.ByteVocabulary`)
characters    the character set's JSON (`CharacterVocabulary` / `CharacterTable`)
sentencepiece the effective model bytes, extra ids included as pieces
              (`seqio.SentencePieceVocabulary` / `SentencePieceTable`)
wordpiece     the BERT `vocab.txt` and the case setting (`WordPieceVocabulary`)
hf_tokenizer  the `tokenizer.json` and its BOS/EOS settings (`HfTokenizerVocabulary`)
passthrough   nothing but the size (ids that are not text, e.g. labels)
============  ==============================================================

Each entry also keeps `describe_vocabulary`'s record (class, size, SHA-256 of
the content), so a damaged or swapped file is refused on reading. Writing needs
neither seqio nor TensorFlow (a host training from a split snapshot exports
too); reading builds seqio vocabularies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

from llmos_jax.data.vocabulary_tables import (ByteTable, CharacterTable, SentencePieceTable,
                                              parse_json)
from llmos_jax.data.wordpiece_tokenizer import WordPieceTokenizer
from llmos_jax.errors import UserError

MANIFEST_KEY = "vocabularies"  # The meta.json entry.
MANIFEST_VERSION = 1
FOLDER = "vocabulary"  # Where the files go, relative to the export.
_FEATURES = ("outputs", "inputs")  # Outputs first: an identical inputs entry reuses its file.


def describe_vocabulary(vocabulary: Any) -> dict[str, Any]:
    """Enough to tell whether two vocabularies map ids to the same text.

    Content, not paths, identifies a vocabulary: a SentencePiece model by the
    SHA-256 of its model bytes, a character vocabulary by the SHA-256 of its
    JSON (``fingerprint()``). A moved model file resumes fine; a retrained one
    at the same path is refused.
    """
    if callable(getattr(vocabulary, "describe", None)):
        return vocabulary.describe()  # Character vocabularies, with or without seqio.
    description: dict[str, Any] = {"class": type(vocabulary).__name__,
                                   "vocab_size": int(vocabulary.vocab_size)}
    model_bytes = getattr(vocabulary, "sp_model", None)  # seqio.SentencePieceVocabulary's.
    if isinstance(model_bytes, bytes):
        description["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    elif callable(getattr(vocabulary, "fingerprint", None)):
        description["sha256"] = vocabulary.fingerprint()
    return description


@dataclasses.dataclass(frozen=True)
class TaskVocabularies:
    """The vocabulary prompts are encoded with, and the one outputs are decoded with.

    Attributes:
      inputs: Encodes prompts (the task's `inputs` feature when it has one).
      outputs: Decodes generated ids (the `targets` feature).
      inputs_add_eos: Whether the task ends its `inputs` with EOS (encoder
        inputs are fed as trained).
    """

    inputs: Any
    outputs: Any
    inputs_add_eos: bool = False


def task_vocabularies(provider: Any) -> TaskVocabularies:
    """The vocabularies of a seqio Task (or a Mixture's first Task)."""
    features = provider.output_features
    ordered = [features[k] for k in ("targets", "inputs", "input_ids") if k in features]
    output = ordered[0] if ordered else next(iter(features.values()))
    source = features.get("inputs", output)
    return TaskVocabularies(source.vocabulary, output.vocabulary,
                            bool(getattr(source, "add_eos", False)) and "inputs" in features)


@dataclasses.dataclass(frozen=True)
class VocabularyFiles:
    """What `vocabulary_files` gives: the manifest for meta.json and the files it names.

    Attributes:
      manifest: JSON-able; `read_vocabularies` takes it back.
      files: Path relative to the export -> contents.
    """

    manifest: dict[str, Any]
    files: dict[str, bytes]


def vocabulary_files(vocabularies: TaskVocabularies) -> VocabularyFiles:
    """The files and manifest that let `read_vocabularies` rebuild `vocabularies`.

    Raises:
      UserError: a vocabulary of a kind that cannot be written (named in the message).
    """
    manifest: dict[str, Any] = {"version": MANIFEST_VERSION,
                                "inputs_add_eos": bool(vocabularies.inputs_add_eos)}
    files: dict[str, bytes] = {}
    for feature in _FEATURES:
        vocabulary = getattr(vocabularies, feature)
        entry, contents = _entry(vocabulary, feature)
        same = manifest.get("outputs")
        if feature == "inputs" and same is not None and same["description"] == entry["description"]:
            entry = dict(same)  # One file for both.
        elif contents is not None:
            files[entry["file"]] = contents
        manifest[feature] = entry
    return VocabularyFiles(manifest, files)


def read_vocabularies(directory: str | pathlib.Path, manifest: Mapping[str, Any]
                      ) -> TaskVocabularies:
    """The vocabularies `vocabulary_files` wrote into `directory` (an export).

    Raises:
      UserError: a missing file, an unknown kind, or a file whose content is not
        the vocabulary the manifest records (named with the path).
    """
    directory = pathlib.Path(directory)
    if manifest.get("version") != MANIFEST_VERSION:
        raise UserError(f"{directory}/meta.json records vocabularies in format "
                        f"{manifest.get('version')!r}; this llmos reads format "
                        f"{MANIFEST_VERSION}. Serve it with the llmos version that wrote it, "
                        "or re-export it.")
    loaded = {feature: _vocabulary(directory, manifest.get(feature), feature)
              for feature in _FEATURES}
    return TaskVocabularies(inputs=loaded["inputs"], outputs=loaded["outputs"],
                            inputs_add_eos=bool(manifest.get("inputs_add_eos", False)))


def _entry(vocabulary: Any, feature: str) -> tuple[dict[str, Any], bytes | None]:
    """One manifest entry and the file it names (None when the entry says it all)."""
    description = describe_vocabulary(vocabulary)
    table = getattr(vocabulary, "table", vocabulary)  # CharacterVocabulary keeps a table.
    if isinstance(table, CharacterTable):
        return ({"kind": "characters", "file": f"{FOLDER}/{feature}.chars.json",
                 "description": description}, table.to_json().encode("utf-8"))
    # Not imported here: a vocabulary can only be a seqio one once seqio is imported.
    seqio = sys.modules.get("seqio")
    model = None
    if isinstance(vocabulary, SentencePieceTable):
        model = vocabulary.model
    elif seqio and isinstance(vocabulary, seqio.SentencePieceVocabulary):
        model = vocabulary.sp_model
    if model is not None:
        # The effective model (extra ids and normaliser overrides baked in), read back
        # with no extra ids: the same ids and the same SHA-256 as the original.
        return ({"kind": "sentencepiece", "file": f"{FOLDER}/{feature}.model",
                 "extra_ids": int(getattr(vocabulary, "extra_ids", 0) or 0),
                 "description": description}, bytes(model))
    if isinstance(vocabulary, ByteTable):  # A byte-level split snapshot's (no seqio).
        return {"kind": "bytes", "extra_ids": 0, "description": description}, None
    if seqio and isinstance(vocabulary, seqio.ByteVocabulary):
        return {"kind": "bytes", "extra_ids": int(vocabulary.extra_ids),
                "description": description}, None
    if seqio and isinstance(vocabulary, seqio.PassThroughVocabulary):
        return {"kind": "passthrough", "size": int(vocabulary.vocab_size),
                "eos_id": vocabulary.eos_id, "description": description}, None
    tokenizer = getattr(vocabulary, "tokenizer", None)
    if isinstance(tokenizer, WordPieceTokenizer):
        return ({"kind": "wordpiece", "file": f"{FOLDER}/{feature}.vocab.txt",
                 "lowercase": bool(tokenizer.lowercase), "description": description},
                tokenizer.vocab_bytes)
    if isinstance(getattr(vocabulary, "tokenizer_json", None), bytes):  # HfTokenizerVocabulary
        return ({"kind": "hf_tokenizer", "file": f"{FOLDER}/{feature}.tokenizer.json",
                 **vocabulary.settings, "description": description}, vocabulary.tokenizer_json)
    raise UserError(
        f"the {feature} vocabulary {type(vocabulary).__name__} cannot be written with an export "
        "(supported: seqio.ByteVocabulary, CharacterVocabulary, SentencePiece, WordPiece, "
        "HfTokenizerVocabulary, PassThroughVocabulary); use one of them in the task.")


def _vocabulary(directory: pathlib.Path, entry: Mapping[str, Any] | None, feature: str) -> Any:
    import seqio  # Reading builds seqio vocabularies (TensorFlow), so only here.

    source = f"{directory}/meta.json {MANIFEST_KEY}.{feature}"
    if not isinstance(entry, Mapping):
        raise UserError(f"{source} is missing; the export is incomplete: re-export the run.")
    kind = entry.get("kind")
    path = directory / str(entry.get("file", ""))
    if "file" in entry and not path.is_file():
        raise UserError(f"{path} is missing ({source} names it); copy the whole export folder, "
                        "or re-export the run.")
    if kind == "bytes":
        vocabulary = seqio.ByteVocabulary(extra_ids=int(entry.get("extra_ids", 0)))
    elif kind == "characters":
        from llmos_jax.data.char_vocabulary import CharacterVocabulary

        vocabulary = CharacterVocabulary(parse_json(path.read_text(encoding="utf-8"), str(path)))
    elif kind == "sentencepiece":
        vocabulary = seqio.SentencePieceVocabulary(str(path.absolute()))
    elif kind == "wordpiece":
        from llmos_jax.data.wordpiece_vocab import WordPieceVocabulary

        vocabulary = WordPieceVocabulary(path, lowercase=bool(entry.get("lowercase", True)))
    elif kind == "hf_tokenizer":
        from llmos_jax.data.hf_tokenizer_vocab import HfTokenizerVocabulary

        vocabulary = HfTokenizerVocabulary(path, add_bos=bool(entry.get("add_bos")),
                                           bos_token=entry.get("bos_token"),
                                           eos_token=entry.get("eos_token"))
    elif kind == "passthrough":
        vocabulary = seqio.PassThroughVocabulary(int(entry["size"]), entry.get("eos_id"))
    else:
        raise UserError(f"{source} has kind {kind!r}, which this llmos cannot read (it reads "
                        "bytes, characters, sentencepiece, wordpiece, hf_tokenizer, passthrough); serve it "
                        "with the llmos version that wrote it.")
    found = describe_vocabulary(vocabulary)
    if found != entry.get("description"):
        raise UserError(f"{path if 'file' in entry else source} is not the vocabulary the "
                        f"export was written with (recorded {entry.get('description')}, found "
                        f"{found}); copy the export folder again, or re-export the run.")
    return vocabulary
