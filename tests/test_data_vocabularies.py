"""Vocabularies: character (JSON round trip), SentencePiece training, and checkpoint identity."""

import gzip
import pathlib

import pytest
import seqio
import tensorflow as tf

from llmos_jax.cli import main as cli
from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.data.sentencepiece_vocab import sentencepiece_vocabulary, train_sentencepiece
from llmos_jax.errors import UserError
from llmos_jax.training import run_metadata

MIXED = ("床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。",
         "The quick brown fox  jumps over the lazy dog.",
         "白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。 Twice: the fox!")


def _tf_round_trip(vocabulary: seqio.Vocabulary, text: str) -> tuple[list[int], str]:
    ids = vocabulary.encode_tf(tf.constant(text))
    return ids.numpy().tolist(), vocabulary.decode_tf(ids).numpy().decode("utf-8")


def test_char_vocabulary_ids_are_specials_then_sorted_characters():
    vocabulary = CharacterVocabulary.from_texts(["hello", "world!"])

    assert vocabulary.characters == "!dehlorw"
    assert vocabulary.vocab_size == 3 + 8
    assert vocabulary.encode("hello!") == [6, 5, 7, 7, 8, 3]  # '!' 3, 'd' 4, 'e' 5, 'h' 6, ...
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    assert vocabulary.encode("hex") == [6, 5, 2]  # 'x' is outside the set: UNK.
    assert vocabulary.decode([6, 5, 2, 0]) == "he\ufffd"
    assert vocabulary.decode([6, 1, 5]) == "h"  # Stops at EOS.


def test_char_vocabulary_round_trips_chinese_in_python_and_tensorflow():
    vocabulary = CharacterVocabulary.from_texts(MIXED)

    for text in MIXED:
        ids = vocabulary.encode(text)
        assert vocabulary.decode(ids) == text
        tf_ids, tf_text = _tf_round_trip(vocabulary, text)
        assert tf_ids == ids and tf_text == text
    assert _tf_round_trip(vocabulary, "月Q")[0] == vocabulary.encode("月") + [2]  # No Q: UNK.
    batch = vocabulary.decode_tf(tf.constant([vocabulary.encode("明月") + [1, 5, 0, 0],
                                              vocabulary.encode("fox") + [0, 0, 0]]))
    assert [t.decode("utf-8") for t in batch.numpy()] == ["明月", "fox"]


def test_char_vocabulary_json_round_trip_is_exact(tmp_path):
    original = CharacterVocabulary.from_texts(MIXED)
    path = original.save_json(tmp_path / "vocab" / "chars.json")

    loaded = CharacterVocabulary(json_path=path)

    assert loaded == original and loaded.characters == original.characters
    assert loaded.fingerprint() == original.fingerprint()
    assert loaded.encode(MIXED[0]) == original.encode(MIXED[0])


def test_char_vocabulary_from_corpus_is_lazy_and_reads_gzip(tmp_path):
    corpus = tmp_path / "corpus.txt.gz"
    vocabulary = CharacterVocabulary(corpus_paths=[corpus])  # Not read yet: may not exist.
    corpus.write_bytes(gzip.compress("ba\nc".encode()))

    assert vocabulary.characters == "\nabc" and vocabulary.vocab_size == 7


def test_char_vocabulary_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="exactly one of characters, json_path or corpus_paths"):
        CharacterVocabulary("ab", json_path=tmp_path / "x.json")
    with pytest.raises(UserError, match="distinct characters"):
        CharacterVocabulary("aa")
    (tmp_path / "bad.json").write_text('{"chars": "ab"}')
    with pytest.raises(UserError, match=r"bad\.json' is not a character vocabulary file"):
        CharacterVocabulary(json_path=tmp_path / "bad.json").characters
    with pytest.raises(UserError, match=r"missing\.json' does not exist"):
        CharacterVocabulary(json_path=tmp_path / "missing.json").vocab_size


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> pathlib.Path:
    prefix = tmp_path_factory.mktemp("spm") / "mixed"
    return train_sentencepiece(list(MIXED) * 10, prefix, 75, model_type="unigram",
                               character_coverage=1.0, num_threads=1)


def test_sentencepiece_round_trips_chinese_and_english(spm_model):
    vocabulary = sentencepiece_vocabulary(spm_model)

    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    assert vocabulary.vocab_size == 75
    for text in MIXED:  # Full-width punctuation, double spaces and line breaks survive.
        ids = vocabulary.encode(text)
        assert 2 not in ids
        assert vocabulary.decode(ids) == text
        assert _tf_round_trip(vocabulary, text) == (ids, text)


def test_bpe_model_type_and_too_large_vocab_size(tmp_path):
    model = train_sentencepiece(list(MIXED) * 10, tmp_path / "bpe", 74, model_type="bpe",
                                character_coverage=1.0, num_threads=1)
    vocabulary = sentencepiece_vocabulary(model)
    assert vocabulary.decode(vocabulary.encode(MIXED[2])) == MIXED[2]

    with pytest.raises(UserError, match=r"--vocab_size=5000.*Vocabulary size too high"):
        train_sentencepiece(MIXED, tmp_path / "big", 5000, character_coverage=1.0, num_threads=1)
    with pytest.raises(UserError, match="--model_type='wordpiece'"):
        train_sentencepiece(MIXED, tmp_path / "wp", 100, model_type="wordpiece")
    with pytest.raises(UserError, match="training text is empty"):
        train_sentencepiece(["", "  \n"], tmp_path / "empty", 100)


def test_llmos_vocab_train_and_chars_commands(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt.gz"
    corpus.write_bytes(gzip.compress(("\n".join(MIXED * 10)).encode("utf-8")))
    prefix = tmp_path / "out" / "cli"

    status = cli.main(["vocab", "train", f"--input={corpus}", "--vocab_size=75",
                       "--model_type=bpe", "--character_coverage=1.0", f"--output={prefix}"])

    assert status == 0
    assert f"wrote {prefix}.model and {prefix}.vocab (75 pieces)" in capsys.readouterr().out
    vocabulary = sentencepiece_vocabulary(f"{prefix}.model")
    assert vocabulary.decode(vocabulary.encode(MIXED[0])) == MIXED[0]

    assert cli.main(["vocab", "chars", f"--input={corpus}", f"--output={tmp_path}/c.json"]) == 0
    assert CharacterVocabulary(json_path=tmp_path / "c.json") == CharacterVocabulary.from_texts(MIXED)


def test_llmos_vocab_train_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["vocab", "train", "--vocab_size=80", f"--output={tmp_path}/x"]) == 2
    assert "give either --input=FILE" in capsys.readouterr().err
    assert cli.main(["vocab", "train", f"--input={tmp_path}/none.txt", "--vocab_size=80",
                     f"--output={tmp_path}/x"]) == 2
    assert "none.txt' does not exist" in capsys.readouterr().err


def _meta(vocabulary) -> dict:
    return {"vocabulary": run_metadata.describe_vocabulary(vocabulary), "data": {}}


def test_checkpoint_vocabulary_is_identified_by_content(spm_model, tmp_path):
    moved = tmp_path / "moved.model"
    moved.write_bytes(spm_model.read_bytes())
    retrained = train_sentencepiece(list(MIXED) * 10, tmp_path / "other", 74,
                                    character_coverage=1.0, num_threads=1)
    chars = CharacterVocabulary.from_texts(MIXED)
    byte_description = run_metadata.describe_vocabulary(seqio.ByteVocabulary())

    assert byte_description == {"class": "ByteVocabulary", "vocab_size": 259}  # As before.
    saved = _meta(sentencepiece_vocabulary(spm_model))
    run_metadata.check_compatible(saved, _meta(sentencepiece_vocabulary(moved)),
                                  checkpoint_dir=tmp_path)  # Same bytes elsewhere: fine.
    for different in (sentencepiece_vocabulary(retrained), chars, seqio.ByteVocabulary()):
        with pytest.raises(UserError, match="was trained with vocabulary .* but this run uses"):
            run_metadata.check_compatible(saved, _meta(different), checkpoint_dir=tmp_path)
    # Same size, other characters: still refused.
    other_chars = CharacterVocabulary("".join(chr(ord(c) + 1) for c in chars.characters))
    assert other_chars.vocab_size == chars.vocab_size
    with pytest.raises(UserError, match="resume with the original task"):
        run_metadata.check_compatible(_meta(chars), _meta(other_chars), checkpoint_dir=tmp_path)
