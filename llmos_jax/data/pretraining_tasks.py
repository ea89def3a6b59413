"""Built-in self-supervised pretraining tasks on tinyshakespeare, byte-level.

=====================================  ===============================================
``bert_mlm_nsp_shakespeare_bytes``     BERT MLM + NSP examples (``ExampleBatches``);
                                       documents are speeches (blank-line paragraphs),
                                       sentences their lines; bytes + [CLS] [SEP] [MASK]
``span_corruption_shakespeare_bytes``  T5 span corruption ``inputs`` -> ``targets``
                                       (``LMBatches`` with the ``enc_dec`` converter);
                                       bytes + 100 sentinels
=====================================  ===============================================

Both split the file as ``tiny_shakespeare_char`` does (first 90% of
characters train, the rest validation), and their randomness (pairs, masks,
spans) is a pure function of ``seed`` and the example index.
"""

from __future__ import annotations

import functools

import gin
import seqio
import tensorflow as tf

from llmos_jax.data.data_dir import resolve_data_path
from llmos_jax.data.pretraining.bert_pretraining import bert_pretraining, byte_vocab_ids
from llmos_jax.data.pretraining.next_sentence_pairs import tokenize_sentences
from llmos_jax.data.pretraining.span_corruption import SentinelIds, span_corruption
from llmos_jax.data.sources import FunctionSource
from llmos_jax.errors import UserError

BERT_SHAKESPEARE = "bert_mlm_nsp_shakespeare_bytes"
SPAN_CORRUPTION_SHAKESPEARE = "span_corruption_shakespeare_bytes"
SHAKESPEARE_FILE = "tinyshakespeare/input.txt"
SPLITS = ("train", "validation")


def _split_text(path: str, train_fraction: float, setting: str):
    file = resolve_data_path(path, f"{setting}.path")
    if not 0.0 < train_fraction < 1.0:
        raise UserError(f"{setting}.train_fraction={train_fraction} must be in (0, 1).")

    def split_text(split: str) -> str:
        # As catalog.nanogpt_char_split (not imported: the catalog imports this module).
        text = file.read_text(encoding="utf-8")
        cut = int(len(text) * train_fraction)
        return text[:cut] if split == "train" else text[cut:]

    return split_text


def speeches(text: str) -> list[str]:
    """Blank-line separated paragraphs (a speaker's speech), each a document of lines."""
    return [paragraph.strip("\n") for paragraph in text.split("\n\n") if paragraph.strip()]


def _lines_as_sentences(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda ex: {"sentences": tf.strings.split(ex["text"], "\n")},
                       num_parallel_calls=tf.data.AUTOTUNE)


@gin.configurable
def register_bert_mlm_nsp_shakespeare_bytes(path: str = SHAKESPEARE_FILE,
                                            train_fraction: float = 0.9, seed: int = 0,
                                            mask_rate: float = 0.15,
                                            max_predictions: int | None = None) -> str:
    """Registers ``bert_mlm_nsp_shakespeare_bytes`` (features of ``bert_pretraining``).

    The example length is ``sequence_length['input_ids']`` (``ExampleBatches``
    passes ``train.sequence_length``). Vocabulary: ``ByteVocabulary(extra_ids=3)``,
    262 ids ([CLS] 259, [SEP] 260, [MASK] 261).
    """
    split_text = _split_text(path, train_fraction, "register_bert_mlm_nsp_shakespeare_bytes")
    vocabulary = seqio.ByteVocabulary(extra_ids=3)
    source = FunctionSource(lambda split: speeches(split_text(split)), SPLITS)
    seqio.TaskRegistry.remove(BERT_SHAKESPEARE)
    seqio.TaskRegistry.add(
        BERT_SHAKESPEARE, source=source,
        preprocessors=[
            _lines_as_sentences,
            functools.partial(tokenize_sentences, vocabulary=vocabulary),
            functools.partial(bert_pretraining, token_ids=byte_vocab_ids(), seed=seed,
                              mask_rate=mask_rate, max_predictions=max_predictions),
        ],
        output_features={"input_ids": seqio.Feature(vocabulary, add_eos=False)})
    return BERT_SHAKESPEARE


@gin.configurable
def register_span_corruption_shakespeare_bytes(path: str = SHAKESPEARE_FILE,
                                               train_fraction: float = 0.9, seed: int = 0,
                                               sentinels: int = 100,
                                               noise_density: float = 0.15,
                                               mean_noise_span_length: float = 3.0) -> str:
    """Registers ``span_corruption_shakespeare_bytes``: T5's objective on the text, bytes.

    The text is cut into chunks whose corrupted inputs plus EOS fit
    ``sequence_length['inputs']``; give ``targets`` the length
    ``lengths_for_inputs(inputs).targets + 1`` (or more) so nothing is trimmed.
    Vocabulary: ``ByteVocabulary(extra_ids=sentinels)``; sentinels count down
    from the top id, as in T5.
    """
    split_text = _split_text(path, train_fraction, "register_span_corruption_shakespeare_bytes")
    vocabulary = seqio.ByteVocabulary(extra_ids=sentinels)
    source = FunctionSource(lambda split: [split_text(split)], SPLITS)
    seqio.TaskRegistry.remove(SPAN_CORRUPTION_SHAKESPEARE)
    seqio.TaskRegistry.add(
        SPAN_CORRUPTION_SHAKESPEARE, source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            functools.partial(span_corruption, seed=seed,
                              sentinels=SentinelIds.top_of_vocabulary(vocabulary.vocab_size,
                                                                      count=sentinels),
                              noise_density=noise_density,
                              mean_noise_span_length=mean_noise_span_length),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={key: seqio.Feature(vocabulary, add_eos=True)
                         for key in ("inputs", "targets")})
    return SPAN_CORRUPTION_SHAKESPEARE
