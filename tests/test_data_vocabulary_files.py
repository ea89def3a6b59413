"""Vocabularies written as export files and read back: every kind keeps its ids and identity."""

import json
import logging

import numpy as np
import pytest
import seqio

from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.data.sentencepiece_vocab import train_sentencepiece
from llmos_jax.data.vocabulary_files import (MANIFEST_KEY, TaskVocabularies, describe_vocabulary,
                                             read_vocabularies, vocabulary_files)
from llmos_jax.data.vocabulary_tables import ByteTable, CharacterTable, SentencePieceTable
from llmos_jax.data.wordpiece_vocab import WordPieceVocabulary
from llmos_jax.errors import UserError

TEXT = "the cat sat on the mat. 春眠不觉晓，处处闻啼鸟。\nthe dog ran"
LINES = ["the cat sat on the mat", "the dog ran to the barn", "春眠不觉晓", "处处闻啼鸟",
         "a cat and a dog", "the red barn"] * 5


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    return train_sentencepiece(LINES, tmp_path_factory.mktemp("spm") / "tiny", 34,
                               character_coverage=1.0, num_threads=1)


@pytest.fixture(scope="module")
def wordpiece_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
              ".", "dog", "ran", "##s", "a"]
    path.write_text("\n".join(tokens) + "\n")
    return path


def _kinds(sentencepiece_model, wordpiece_file):
    return {
        "bytes": seqio.ByteVocabulary(extra_ids=3),
        "byte table": ByteTable(),
        "characters": CharacterVocabulary.from_texts([TEXT]),
        "character table": CharacterTable("".join(sorted(set(TEXT)))),
        "sentencepiece with extra ids": seqio.SentencePieceVocabulary(str(sentencepiece_model),
                                                                      extra_ids=2),
        "sentencepiece table": SentencePieceTable(sentencepiece_model.read_bytes()),
        "wordpiece": WordPieceVocabulary(wordpiece_file, lowercase=True),
    }


def test_every_kind_reads_back_with_the_same_ids_and_identity(sentencepiece_model,
                                                              wordpiece_file, tmp_path):
    for kind, vocabulary in _kinds(sentencepiece_model, wordpiece_file).items():
        folder = tmp_path / kind.replace(" ", "_")
        written = vocabulary_files(TaskVocabularies(vocabulary, vocabulary))
        for relative, contents in written.files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(contents)
        manifest = json.loads(json.dumps(written.manifest))  # as meta.json holds it
        back = read_vocabularies(folder, manifest)
        assert len(written.files) <= 1, f"{kind}: one file serves inputs and outputs"
        assert back.inputs is back.outputs or describe_vocabulary(back.inputs) == \
            describe_vocabulary(back.outputs)
        assert describe_vocabulary(back.outputs) == describe_vocabulary(vocabulary), kind
        text = "the cat sat on the mat" if kind == "wordpiece" else TEXT
        ids = list(vocabulary.encode(text))
        assert list(back.outputs.encode(text)) == ids, kind
        assert back.outputs.decode(ids) == vocabulary.decode(ids), kind
        assert back.outputs.eos_id == vocabulary.eos_id and \
            back.outputs.vocab_size == vocabulary.vocab_size, kind


def test_sentencepiece_extra_ids_decode_as_before(sentencepiece_model, tmp_path):
    vocabulary = seqio.SentencePieceVocabulary(str(sentencepiece_model), extra_ids=2)
    written = vocabulary_files(TaskVocabularies(vocabulary, vocabulary))
    for relative, contents in written.files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(contents)
    back = read_vocabularies(tmp_path, written.manifest).outputs
    sentinel = vocabulary.vocab_size - 1  # <extra_id_0>, counted down from the end
    ids = [*vocabulary.encode("the cat"), sentinel, *vocabulary.encode("the mat")]
    assert back.decode(ids) == vocabulary.decode(ids)
    assert written.manifest["outputs"]["extra_ids"] == 2


def test_inputs_and_outputs_differ_and_eos_flag_travels(tmp_path):
    inputs, outputs = CharacterVocabulary("abc "), seqio.ByteVocabulary()
    written = vocabulary_files(TaskVocabularies(inputs, outputs, inputs_add_eos=True))
    assert set(written.files) == {"vocabulary/inputs.chars.json"}
    for relative, contents in written.files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(contents)
    back = read_vocabularies(tmp_path, written.manifest)
    assert back.inputs_add_eos
    assert back.inputs.encode("cab") == [5, 3, 4] and back.outputs.encode("a") == [100]


def test_damaged_missing_or_unknown_files_are_named(tmp_path):
    vocabulary = CharacterVocabulary("abc")
    written = vocabulary_files(TaskVocabularies(vocabulary, vocabulary))
    with pytest.raises(UserError, match=r"vocabulary/outputs.chars.json is missing"):
        read_vocabularies(tmp_path, written.manifest)
    (tmp_path / "vocabulary").mkdir()
    damaged = CharacterVocabulary("abd").to_json()
    (tmp_path / "vocabulary" / "outputs.chars.json").write_text(damaged)
    with pytest.raises(UserError, match=r"outputs.chars.json is not the vocabulary the export"):
        read_vocabularies(tmp_path, written.manifest)
    unknown = {**written.manifest, "outputs": {"kind": "morse", "description": {}}}
    with pytest.raises(UserError, match=r"kind 'morse'"):
        read_vocabularies(tmp_path, unknown)


def test_an_unwritable_vocabulary_does_not_lose_the_export(tmp_path, caplog):
    from llmos_jax.checkpoints.params_reader import read_our_params
    from llmos_jax.training.self_contained_export import write_export

    class Morse:
        vocab_size, eos_id = 10, 1

    with pytest.raises(UserError, match=r"Morse cannot be written"):
        vocabulary_files(TaskVocabularies(Morse(), Morse()))
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with caplog.at_level(logging.WARNING, logger="llmos_jax.train"):
        write_export(tmp_path / "export", params, {"step": 5},
                     vocabularies=TaskVocabularies(Morse(), Morse()))
    assert "will not carry its vocabulary" in caplog.text
    np.testing.assert_array_equal(read_our_params(str(tmp_path / "export"))["w"], params["w"])
    meta = json.loads((tmp_path / "export" / "meta.json").read_text())
    assert MANIFEST_KEY not in meta and meta["step"] == 5
    assert "not carried by this export" in (tmp_path / "export" / "MODEL_CARD.md").read_text()
