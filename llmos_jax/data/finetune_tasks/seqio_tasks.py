"""The fine-tuning datasets as seqio Tasks, wrapping the pure-Python example builders.

=======================  ===========================================================
``sst2_minilm``          SST-2, MiniLM WordPiece: ``input_ids``, ``token_type_ids``, ``label``
``conll2003_minilm``     CoNLL-2003 NER, MiniLM WordPiece: ``input_ids``, ``token_type_ids``,
                         ``labels``, ``label_weights`` (+ text ``words``, ``word_tags``)
``multi30k_en_de_spm``   Multi30k En->De, SentencePiece: ``inputs``, ``targets``
``dialogsum_spm``        DialogSum, SentencePiece: ``inputs``, ``targets`` (+ ``references``)
=======================  ===========================================================

The classification tasks are tokenized by their builders (``sst2``,
``conll2003``), so the Task's examples are exactly the builder's, and the
PyTorch reference reads the same ids. They are variable-length and unpadded;
seqio trims every token feature to its ``sequence_length`` entry and the
trainer pads. Text features (``words``, ``word_tags``, ``references``, ``id``)
are not output features: they pass through the Task for evaluation.

The seq2seq tasks tokenize in seqio with a SentencePiece model whose path is
a gin setting (``register_multi30k_en_de_spm.spm_model``), trained by
``tools/train_seq2seq_vocab.py``; ``inputs``/``targets`` end in EOS and keep
their text as ``inputs_pretokenized``/``targets_pretokenized``.

Every task carries its metrics (seqio ``metric_fns``) for ``llmos eval``:

=======================  ===========================================================
``sst2_minilm``          accuracy, macro F1 on the label id (``"0"``/``"1"`` as text)
``conll2003_minilm``     CoNLL span F1 on word-level IOB2 tags (gold: ``word_tags``)
``multi30k_en_de_spm``   sacrebleu BLEU against the German reference
``dialogsum_spm``        ROUGE against all ``references`` (3 on test)
=======================  ===========================================================

The evaluator reads a task's gold answer from ``targets_pretokenized``, so
the classification tasks add one as text (the label id, the word tags),
after the cache point; training drops it with the other strings.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

import gin
from llmos_jax.data.data_dir import resolve_data_path
from llmos_jax.data.finetune_tasks import conll2003, dialogsum, multi30k, sst2
from llmos_jax.data.sentencepiece_vocab import (
    require_model_file,
    sentencepiece_vocabulary,
)
from llmos_jax.data.wordpiece_vocab import WordPieceVocabulary
from llmos_jax.errors import UserError
from llmos_jax.metrics import accuracy, bleu, conll_span_f1, macro_f1, rouge

SST2 = "sst2_minilm"
CONLL = "conll2003_minilm"
MULTI30K = "multi30k_en_de_spm"
DIALOGSUM = "dialogsum_spm"

Example = Mapping[str, object]
TARGET_TEXT = "targets_pretokenized"
"""The feature the evaluator reads gold answers from (seqio's convention)."""
FeatureSpec = tuple[tf.DType, int]  # dtype and rank of one example feature.


def examples_dataset(examples: Sequence[Example],
                     specs: Mapping[str, FeatureSpec]) -> tf.data.Dataset:
    """A dataset of ``examples`` with exactly the features in ``specs`` (dense tensors)."""
    columns = {}
    for key, (dtype, rank) in specs.items():
        values = [example[key] for example in examples]
        if rank == 0:
            columns[key] = tf.constant(values if dtype == tf.string else np.array(values),
                                       dtype, shape=[len(values)])
        else:
            lengths = np.array([len(v) for v in values], np.int64)
            if dtype == tf.string:
                flat = tf.constant([item for v in values for item in v], tf.string,
                                   shape=[int(lengths.sum())])
            else:
                flat = np.concatenate(values) if values else np.zeros([0])
                flat = flat.astype(dtype.as_numpy_dtype)
            columns[key] = tf.RaggedTensor.from_row_lengths(flat, lengths)
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    # Rows of a ragged column come out as RaggedTensorSpec(ragged_rank=0); make them plain tensors.
    return dataset.map(lambda ex: {key: tf.identity(value) for key, value in ex.items()})


class ExampleSource(seqio.FunctionDataSource):
    """Examples from a Python function of the split name, computed once per split and kept."""

    def __init__(self, examples_fn: Callable[[str], Sequence[Example]], splits: Sequence[str],
                 specs: Mapping[str, FeatureSpec]):
        """Args:
          examples_fn: split name to its examples; called lazily, at most once per split.
          splits: the split names ``examples_fn`` accepts.
          specs: feature name to ``(dtype, rank)``; other keys of the examples are dropped.
        """
        self._examples_fn = examples_fn
        self._specs = dict(specs)
        self._examples: dict[str, Sequence[Example]] = {}

        def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
            del shuffle_files, seed  # One in-memory shard; seqio and the trainer order rows.
            return examples_dataset(self.read(split), self._specs)

        super().__init__(dataset_fn=dataset_fn, splits=tuple(splits))

    def read(self, split: str) -> Sequence[Example]:
        """The examples of ``split``, built on first use."""
        if split not in self._examples:
            self._examples[split] = self._examples_fn(split)
        return self._examples[split]


def _add_task(name: str, source: seqio.DataSource, preprocessors: list,
              output_features: dict[str, seqio.Feature], *, metric_fns: Sequence = (),
              postprocess_fn: Callable | None = None) -> str:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                           output_features=output_features, metric_fns=list(metric_fns),
                           postprocess_fn=postprocess_fn)
    return name


def label_as_target_text(dataset: tf.data.Dataset, label_feature: str = "label"
                         ) -> tf.data.Dataset:
    """Adds ``targets_pretokenized``: the integer class label as decimal text (``"1"``)."""
    return dataset.map(lambda ex: {**ex, TARGET_TEXT: tf.strings.as_string(ex[label_feature])},
                       num_parallel_calls=tf.data.AUTOTUNE)


def text_as_target_text(dataset: tf.data.Dataset, text_feature: str) -> tf.data.Dataset:
    """Adds ``targets_pretokenized``: a copy of the string feature ``text_feature``."""
    return dataset.map(lambda ex: {**ex, TARGET_TEXT: ex[text_feature]},
                       num_parallel_calls=tf.data.AUTOTUNE)


def class_label_id(text: str, example: Example | None = None, is_target: bool = False) -> int:
    """Postprocessor: a label id given as text, as an int; -1 (always wrong) if not one.

    Raises:
      UserError: a gold label that is not an integer (the task is misbuilt).
    """
    del example
    try:
        return int(text)
    except (TypeError, ValueError):
        if is_target:
            raise UserError(f"gold label {text!r} is not an integer class id; the task's "
                            f"{TARGET_TEXT} must hold the label id as text.") from None
        return -1


def tag_sequence(text: str, example: Example | None = None, is_target: bool = False
                 ) -> list[str]:
    """Postprocessor: space-separated tags as a list (one per word)."""
    del example, is_target
    return text.split()


def all_references(text: str, example: Example | None = None, is_target: bool = False
                   ) -> str | list[str]:
    """Postprocessor: a target becomes every reference of its example (predictions stay)."""
    if not is_target or example is None or "references" not in example:
        return text
    return [r.decode("utf-8") if isinstance(r, bytes) else str(r)
            for r in np.asarray(example["references"]).tolist()]


def _id_feature(size: int, dtype: tf.DType = tf.int32, rank: int = 1) -> seqio.Feature:
    """An already-numeric feature (no tokenization, no EOS)."""
    return seqio.Feature(seqio.PassThroughVocabulary(size), add_eos=False, dtype=dtype, rank=rank)


def _check_files(files: Mapping[str, str], setting: str) -> None:
    for split, path in files.items():
        resolve_data_path(path, f"{setting}.{split}")


def _wordpiece(vocab_dir: str | None, lowercase: bool) -> WordPieceVocabulary:
    """MiniLM's vocabulary, or the ``vocab.txt`` in ``vocab_dir`` (relative to the cwd, like other
    vocabulary files)."""
    path = None if vocab_dir is None else pathlib.Path(vocab_dir).expanduser() / "vocab.txt"
    return WordPieceVocabulary(path, lowercase=lowercase)


_TOKEN_SPECS = {"input_ids": (tf.int32, 1), "token_type_ids": (tf.int32, 1)}


@gin.configurable
def register_sst2_minilm(train: str = sst2.SPLIT_FILES["train"],
                         validation: str = sst2.SPLIT_FILES["validation"], *,
                         vocab_dir: str | None = None, lowercase: bool = True,
                         strict: bool = True) -> str:
    """Registers ``sst2_minilm``: GLUE SST-2 for sequence classification (see ``sst2``).

    Args:
      train: the train TSV, relative to the data directory.
      validation: the dev TSV.
      vocab_dir: a folder with a BERT ``vocab.txt`` (relative to the cwd); None uses
        all-MiniLM-L6-v2's.
      lowercase: the vocabulary is uncased.
      strict: fail on a malformed row instead of skipping it.

    Returns:
      ``'sst2_minilm'``.
    """
    files = {"train": train, "validation": validation}
    _check_files(files, "register_sst2_minilm")
    vocabulary = _wordpiece(vocab_dir, lowercase)
    load = functools.partial(sst2.load_sst2, tokenizer=vocabulary.tokenizer, files=files,
                             strict=strict)
    source = ExampleSource(load, tuple(files), {**_TOKEN_SPECS, "label": (tf.int32, 0)})
    features = {"input_ids": seqio.Feature(vocabulary, add_eos=False),
                "token_type_ids": _id_feature(2),
                "label": _id_feature(sst2.NUM_LABELS, rank=0)}
    return _add_task(SST2, source, [seqio.CacheDatasetPlaceholder(), label_as_target_text],
                     features, metric_fns=[accuracy, macro_f1], postprocess_fn=class_label_id)


@gin.configurable
def register_conll2003_minilm(train: str = conll2003.SPLIT_FILES["train"],
                              validation: str = conll2003.SPLIT_FILES["validation"],
                              test: str = conll2003.SPLIT_FILES["test"], *,
                              vocab_dir: str | None = None, lowercase: bool = True,
                              strict: bool = True) -> str:
    """Registers ``conll2003_minilm``: CoNLL-2003 NER for token classification (see ``conll2003``).

    Args:
      train, validation, test: the ``eng.*`` files, relative to the data directory.
      vocab_dir: a folder with a BERT ``vocab.txt`` (relative to the cwd); None uses
        all-MiniLM-L6-v2's.
      lowercase: the vocabulary is uncased.
      strict: fail on a malformed line instead of skipping its sentence.

    Returns:
      ``'conll2003_minilm'``.
    """
    files = {"train": train, "validation": validation, "test": test}
    _check_files(files, "register_conll2003_minilm")
    vocabulary = _wordpiece(vocab_dir, lowercase)
    load = functools.partial(conll2003.load_conll2003, tokenizer=vocabulary.tokenizer,
                             files=files, strict=strict)
    specs = {**_TOKEN_SPECS, "labels": (tf.int32, 1), "label_weights": (tf.float32, 1),
             "words": (tf.string, 0), "word_tags": (tf.string, 0)}
    features = {"input_ids": seqio.Feature(vocabulary, add_eos=False),
                "token_type_ids": _id_feature(2),
                "labels": _id_feature(len(conll2003.LABELS)),
                "label_weights": _id_feature(1, tf.float32)}
    as_target = functools.partial(text_as_target_text, text_feature="word_tags")
    return _add_task(CONLL, ExampleSource(load, tuple(files), specs),
                     [seqio.CacheDatasetPlaceholder(), as_target], features,
                     metric_fns=[conll_span_f1], postprocess_fn=tag_sequence)


def _spm_vocabulary(spm_model: str | None, setting: str, task: str, vocab_size: int = 8000
                    ) -> seqio.SentencePieceVocabulary:
    if spm_model is None:
        prefix = f"vocab/{task}_{vocab_size // 1000}k"
        raise UserError(
            f"{setting} is not set: {task} needs a SentencePiece model. Train one with "
            f"`python tools/train_seq2seq_vocab.py --task={task} --vocab_size={vocab_size} "
            f"--output={prefix}` and set {setting}='{prefix}.model'."
        )
    return sentencepiece_vocabulary(require_model_file(spm_model, setting))


def _seq2seq_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary, *,
                  metric_fns: Sequence, postprocess_fn: Callable | None = None) -> str:
    """Tokenizes ``inputs`` and ``targets`` (keeping their text), appends EOS, caches."""
    preprocessors = [
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True),
        seqio.preprocessors.append_eos,
        seqio.CacheDatasetPlaceholder(),
    ]
    features = {key: seqio.Feature(vocabulary, add_eos=True) for key in ("inputs", "targets")}
    return _add_task(name, source, preprocessors, features, metric_fns=metric_fns,
                     postprocess_fn=postprocess_fn)


@gin.configurable
def register_multi30k_en_de_spm(spm_model: str | None = None,
                                folder: str = multi30k.DEFAULT_FOLDER) -> str:
    """Registers ``multi30k_en_de_spm``: English -> German captions, one shared SentencePiece model.

    Args:
      spm_model: the ``.model`` file from ``tools/train_seq2seq_vocab.py``
        (relative to the cwd). Required.
      folder: the folder of ``{train,val,test_2016_flickr}.{en,de}.gz``,
        relative to the data directory.

    Returns:
      ``'multi30k_en_de_spm'``.
    """
    vocabulary = _spm_vocabulary(spm_model, "register_multi30k_en_de_spm.spm_model", MULTI30K)
    resolve_data_path(folder, "register_multi30k_en_de_spm.folder")
    load = functools.partial(multi30k.load_multi30k, folder=folder)
    specs = {"inputs": (tf.string, 0), "targets": (tf.string, 0)}
    return _seq2seq_task(MULTI30K, ExampleSource(load, tuple(multi30k.SPLIT_STEMS), specs),
                         vocabulary, metric_fns=[bleu])


@gin.configurable
def register_dialogsum_spm(spm_model: str | None = None,
                           train: str = dialogsum.SPLIT_FILES["train"],
                           validation: str = dialogsum.SPLIT_FILES["validation"],
                           test: str = dialogsum.SPLIT_FILES["test"], *,
                           strict: bool = True) -> str:
    """Registers ``dialogsum_spm``: dialogue -> summary with a SentencePiece model.

    Every split also carries ``id`` and ``references`` (all reference
    summaries: 3 on test, for multi-reference ROUGE).

    Args:
      spm_model: the ``.model`` file from ``tools/train_seq2seq_vocab.py``
        (relative to the cwd). Required.
      train, validation, test: the JSONL files, relative to the data directory.
      strict: fail on a malformed line instead of skipping it.

    Returns:
      ``'dialogsum_spm'``.
    """
    vocabulary = _spm_vocabulary(spm_model, "register_dialogsum_spm.spm_model", DIALOGSUM)
    files = {"train": train, "validation": validation, "test": test}
    _check_files(files, "register_dialogsum_spm")
    load = functools.partial(dialogsum.load_dialogsum, files=files, strict=strict)
    specs = {"id": (tf.string, 0), "inputs": (tf.string, 0), "targets": (tf.string, 0),
             "references": (tf.string, 1)}
    return _seq2seq_task(DIALOGSUM, ExampleSource(load, tuple(files), specs), vocabulary,
                         metric_fns=[rouge], postprocess_fn=all_references)

