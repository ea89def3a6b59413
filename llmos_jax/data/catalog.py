"""The project's built-in Tasks, registered on demand by name.

:data:`BUILTIN_TASKS` maps each name to the gin-configurable function that
registers it. ``get_provider`` (and so ``LMBatches`` and ``train``) calls it
the first time the name is asked for, so ``train.task_name =
'tiny_shakespeare_char'`` needs no registration binding. Registering only
checks that files exist; nothing is read until data is requested. Paths are
relative to the data directory (``data_dir``).

=========================  ==================================================
``stdlib_bytes``           this interpreter's stdlib sources, bytes
``tiny_shakespeare_char``  tinyshakespeare/input.txt, characters (68 ids)
``tang_poems_bytes``       chinese_poetry_tang/*.json.gz, one poem per document, bytes
``tang_poems_spm``         the same poems, a SentencePiece vocabulary
``dialogsum_bytes``        dialogsum JSONL, dialogue -> summary (text to text)
``multi30k_en_de_bytes``   multi30k .gz line pairs, English -> German
``sst2_minilm``            GLUE SST-2 classification, MiniLM WordPiece (``finetune_tasks``)
``conll2003_minilm``       CoNLL-2003 NER, IOB2 labels on first sub-tokens, MiniLM WordPiece
``multi30k_en_de_spm``     Multi30k English -> German, a SentencePiece vocabulary
``dialogsum_spm``          DialogSum dialogue -> summary, a SentencePiece vocabulary
=========================  ==================================================

Pretraining tasks (``pretraining_tasks``): ``bert_mlm_nsp_shakespeare_bytes``
(BERT MLM + NSP) and ``span_corruption_shakespeare_bytes`` (T5 span
corruption), both on tinyshakespeare, byte-level.
"""

from __future__ import annotations

from collections.abc import Callable

import gin
import seqio

from llmos_jax.data import pretraining_tasks, text_tasks
from llmos_jax.data.char_corpus import nanogpt_char_split  # noqa: F401 (also used from here)
from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.data.data_dir import resolve_data_files, resolve_data_path
from llmos_jax.data.finetune_tasks import seqio_tasks as finetune_tasks
from llmos_jax.data.records import JsonArrayFormat, JsonlFormat, LinesFormat, read_records
from llmos_jax.data.registry import register_lm_task, register_text_to_text_task
from llmos_jax.data.sentencepiece_vocab import require_model_file, sentencepiece_vocabulary
from llmos_jax.data.sources import FileSource, FunctionSource, HeldOut
from llmos_jax.errors import UserError

SHAKESPEARE = "tiny_shakespeare_char"
TANG_BYTES = "tang_poems_bytes"
TANG_SPM = "tang_poems_spm"
TANG_FILES = "chinese_poetry_tang/poet.tang.*.json.gz"
TANG_FIELDS = {"text": ("title", "paragraphs"), "id": "id"}


@gin.configurable
def register_tiny_shakespeare_char(path: str = "tinyshakespeare/input.txt",
                                   train_fraction: float = 0.9,
                                   vocab_json: str | None = None) -> str:
    """Registers ``tiny_shakespeare_char``: Karpathy's tinyshakespeare, character-level.

    Exactly nanoGPT's ``shakespeare_char`` data: the first 90% of characters
    train, the last 10% validation, and a vocabulary of the file's own
    characters (65 for the standard file, so ``vocab_size`` 68 with pad, EOS
    and UNK). Each split is one document (EOS at its end) cut into windows of
    ``sequence_length`` characters; no paragraph splitting, so windows are
    consecutive and never padded except the last. Unlike nanoGPT, which draws
    windows at random offsets, rows are these fixed windows, shuffled.
    ``LMBatches.pipeline = 'numpy'`` builds the same rows without seqio, from
    ``char_corpus.CharCorpus`` (bind its ``path`` etc. there).

    Args:
      path: the text file.
      train_fraction: the leading share of characters used for training.
      vocab_json: a character vocabulary file to use instead of the file's own
        characters (relative to the cwd; written by
        ``CharacterVocabulary.save_json``).

    Returns:
      ``'tiny_shakespeare_char'``.
    """
    file = resolve_data_path(path, "register_tiny_shakespeare_char.path")
    if not 0.0 < train_fraction < 1.0:
        raise UserError(f"register_tiny_shakespeare_char.train_fraction={train_fraction} must be "
                        "in (0, 1).")
    vocabulary = (CharacterVocabulary(json_path=vocab_json) if vocab_json
                  else CharacterVocabulary(corpus_paths=[file]))

    def split_text(split: str) -> list[str]:
        text = file.read_text(encoding="utf-8")
        return [nanogpt_char_split(text, train_fraction)[split]]

    return register_lm_task(SHAKESPEARE, FunctionSource(split_text, ("train", "validation")),
                            vocabulary)


def _tang_source(files: str, validation_fraction: float, strict: bool, setting: str) -> FileSource:
    """Poems as documents: title, then each paragraph (line) of the poem, newline-joined.

    Validation is the poems whose id hashes into the first
    ``validation_fraction`` (see ``HeldOut``): deterministic, and stable when
    files are added.
    """
    return FileSource(
        {"train": files, "validation": files},
        JsonArrayFormat(fields=TANG_FIELDS),
        strict=strict,
        held_out=HeldOut("validation", validation_fraction, "id"),
        setting=setting,
    )


@gin.configurable
def register_tang_poems_bytes(files: str = TANG_FILES, validation_fraction: float = 0.02,
                              strict: bool = True) -> str:
    """Registers ``tang_poems_bytes``: the Complete Tang Poems, byte-level.

    Also the text source for training the ``tang_poems_spm`` vocabulary:
    ``llmos vocab train --task=tang_poems_bytes ...`` reads its train split.
    """
    source = _tang_source(files, validation_fraction, strict, "register_tang_poems_bytes")
    return register_lm_task(TANG_BYTES, source, seqio.ByteVocabulary())


@gin.configurable
def register_tang_poems_spm(spm_model: str | None = None, files: str = TANG_FILES,
                            validation_fraction: float = 0.02, strict: bool = True) -> str:
    """Registers ``tang_poems_spm``: the Tang poems of ``tang_poems_bytes`` with a SentencePiece model.

    Args:
      spm_model: the ``.model`` file from ``llmos vocab train`` (relative to
        the cwd). Required.
      files: glob of the poem files, relative to the data directory.
      validation_fraction: share of poems held out, chosen by id hash.
      strict: fail on a malformed poem record instead of skipping it.

    Raises:
      UserError: ``spm_model`` is unset or missing, with the command to train it.
    """
    setting = "register_tang_poems_spm.spm_model"
    if spm_model is None:
        raise UserError(
            f"{setting} is not set: tang_poems_spm needs a SentencePiece model. Train one with "
            "`llmos vocab train --task=tang_poems_bytes --vocab_size=8000 "
            "--output=vocab/tang_poems_8k` and set "
            f"{setting}='vocab/tang_poems_8k.model'."
        )
    vocabulary = sentencepiece_vocabulary(require_model_file(spm_model, setting))
    source = _tang_source(files, validation_fraction, strict, "register_tang_poems_spm")
    return register_lm_task(TANG_SPM, source, vocabulary)


@gin.configurable
def register_dialogsum_bytes(train: str = "dialogsum/dialogsum.train.early2021.jsonl.gz",
                             validation: str = "dialogsum/dialogsum.dev.jsonl") -> str:
    """Registers ``dialogsum_bytes``: dialogue -> summary, byte-level, for prefix-LM / enc-dec."""
    source = FileSource({"train": train, "validation": validation},
                        JsonlFormat(fields={"inputs": "dialogue", "targets": "summary"}),
                        setting="register_dialogsum_bytes")
    return register_text_to_text_task("dialogsum_bytes", source, seqio.ByteVocabulary())


@gin.configurable
def register_multi30k_en_de_bytes(folder: str = "multi30k") -> str:
    """Registers ``multi30k_en_de_bytes``: aligned English -> German captions, byte-level.

    Line ``i`` of ``{split}.en.gz`` translates to line ``i`` of
    ``{split}.de.gz``; splits are train, validation (``val``) and test
    (``test_2016_flickr``).
    """
    setting = "register_multi30k_en_de_bytes.folder"
    stems = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
    directory = resolve_data_path(folder, setting)

    def pairs(split: str) -> list[dict[str, str]]:
        sides = []
        for language in ("en", "de"):
            [path] = resolve_data_files(directory / f"{stems[split]}.{language}.gz", setting)
            sides.append([r["text"] for r in read_records(path, LinesFormat(), strict=True,
                                                          setting=setting).records])
        if len(sides[0]) != len(sides[1]):
            raise UserError(f"multi30k split {split!r} has {len(sides[0])} English but "
                            f"{len(sides[1])} German lines; the files under {setting} must align.")
        return [{"inputs": en, "targets": de} for en, de in zip(*sides)]

    source = FunctionSource(pairs, tuple(stems), features=("inputs", "targets"))
    return register_text_to_text_task("multi30k_en_de_bytes", source, seqio.ByteVocabulary())


BUILTIN_TASKS: dict[str, Callable[[], str]] = {
    "stdlib_bytes": text_tasks.register_stdlib_task,
    SHAKESPEARE: register_tiny_shakespeare_char,
    TANG_BYTES: register_tang_poems_bytes,
    TANG_SPM: register_tang_poems_spm,
    "dialogsum_bytes": register_dialogsum_bytes,
    "multi30k_en_de_bytes": register_multi30k_en_de_bytes,
    finetune_tasks.SST2: finetune_tasks.register_sst2_minilm,
    finetune_tasks.CONLL: finetune_tasks.register_conll2003_minilm,
    finetune_tasks.MULTI30K: finetune_tasks.register_multi30k_en_de_spm,
    finetune_tasks.DIALOGSUM: finetune_tasks.register_dialogsum_spm,
    pretraining_tasks.BERT_SHAKESPEARE: pretraining_tasks.register_bert_mlm_nsp_shakespeare_bytes,
    pretraining_tasks.SPAN_CORRUPTION_SHAKESPEARE:
        pretraining_tasks.register_span_corruption_shakespeare_bytes,
}
"""Built-in task name to the function that registers it (with its gin-bound arguments)."""


def register_builtin_tasks() -> dict[str, str]:
    """Registers every built-in Task not yet registered; returns why any could not be.

    A Task registered earlier (possibly with other arguments) is left alone.
    """
    problems = {}
    for name, register in BUILTIN_TASKS.items():
        if name in seqio.TaskRegistry.names():
            continue
        try:
            register()
        except UserError as error:
            problems[name] = str(error).split("\n  In call to configurable")[0]
    return problems
