"""Multi30k and DialogSum seq2seq tasks: aligned pairs, split counts, references,
the SentencePiece setting, and the vocabulary-training tool."""

import gzip
import importlib.util
import logging

import pytest

from llmos_jax.data.finetune_tasks import dialogsum, multi30k
from llmos_jax.errors import UserError


@pytest.fixture
def data_dir(shared_data_dir, monkeypatch):
    monkeypatch.setenv("LLMOS_DATA_DIR", str(shared_data_dir))
    return shared_data_dir


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory, shared_data_dir):
    """A 300-piece model trained on the Multi30k and DialogSum validation text."""
    from llmos_jax.data.sentencepiece_vocab import train_sentencepiece

    texts = [e[k] for e in multi30k.load_multi30k("validation", folder=str(shared_data_dir / "multi30k"))
             for k in ("inputs", "targets")]
    texts += [e["targets"] for e in dialogsum.load_dialogsum(
        "validation", files={"validation": str(shared_data_dir / dialogsum.SPLIT_FILES["validation"])})]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("spm") / "tiny", 300,
                               character_coverage=1.0, num_threads=1)


def test_multi30k_pairs_align_with_the_right_counts(data_dir):
    counts = {split: len(multi30k.load_multi30k(split)) for split in ("train", "validation", "test")}
    assert counts == {"train": 29000, "validation": 1014, "test": 1000}
    first = multi30k.load_multi30k("validation")[0]
    assert first == {"inputs": "A group of men are loading cotton onto a truck",
                     "targets": "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen"}


def test_multi30k_refuses_misaligned_files(tmp_path):
    for language, lines in (("en", ["a", "b", "c"]), ("de", ["x", "y"])):
        (tmp_path / f"val.{language}.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(UserError, match=r"3 English but 2 German lines"):
        multi30k.load_multi30k("validation", folder=str(tmp_path))


def test_dialogsum_counts_and_references(data_dir):
    train = dialogsum.load_dialogsum("train")
    validation = dialogsum.load_dialogsum("validation")
    test = dialogsum.load_dialogsum("test")
    assert (len(train), len(validation), len(test)) == (12460, 500, 500)
    assert all(len(e["references"]) == 1 and e["references"][0] == e["targets"] for e in validation)
    assert all(len(e["references"]) == 3 and e["references"][0] == e["targets"] for e in test)
    assert test[0]["id"] == "test_0" and test[0]["inputs"].startswith("#Person1#: Ms. Dawson")
    assert len(set(test[0]["references"])) == 3


def test_dialogsum_malformed_lines_follow_strictness(tmp_path, caplog):
    path = tmp_path / "dev.jsonl"
    path.write_text('{"fname": "d0", "dialogue": "#Person1#: hi", "summary": "A greeting."}\n'
                    '{"fname": "d1", "dialogue": "no summary"}\nnot json\n')
    files = {"validation": str(path)}
    with pytest.raises(UserError, match=r"dev.jsonl:2: malformed .*missing key 'summary'"):
        dialogsum.load_dialogsum("validation", files=files)
    with caplog.at_level(logging.WARNING, logger="llmos_jax.data"):
        kept = dialogsum.load_dialogsum("validation", files=files, strict=False)
    assert [e["id"] for e in kept] == ["d0"] and "skipped 2 malformed line(s)" in caplog.text


def test_seq2seq_tasks_need_a_sentencepiece_model(data_dir):
    from llmos_jax.data.finetune_tasks import seqio_tasks

    with pytest.raises(UserError, match=r"register_multi30k_en_de_spm.spm_model is not set.*"
                                        r"tools/train_seq2seq_vocab.py --task=multi30k_en_de_spm"):
        seqio_tasks.register_multi30k_en_de_spm()
    with pytest.raises(UserError, match=r"register_dialogsum_spm.spm_model='nope.model'.*does not exist"):
        seqio_tasks.register_dialogsum_spm("nope.model")


def test_seq2seq_tasks_tokenize_aligned_pairs(data_dir, tiny_spm):
    import seqio

    from llmos_jax.data.finetune_tasks import seqio_tasks
    from llmos_jax.data.providers import get_provider

    seqio_tasks.register_multi30k_en_de_spm(str(tiny_spm))
    task = get_provider("multi30k_en_de_spm", "test")
    assert tuple(task.splits) == ("train", "validation", "test")
    vocabulary = task.output_features["inputs"].vocabulary
    assert isinstance(vocabulary, seqio.SentencePieceVocabulary)
    rows = list(task.get_dataset({"inputs": 512, "targets": 512}, "validation", shuffle=False)
                .as_numpy_iterator())
    pairs = multi30k.load_multi30k("validation")
    assert len(rows) == len(pairs) == 1014
    for row, pair in zip(rows[:20], pairs):
        assert row["inputs_pretokenized"].decode() == pair["inputs"]
        assert row["targets_pretokenized"].decode() == pair["targets"]
        assert row["targets"][-1] == 1  # EOS.
        assert vocabulary.decode(row["targets"].tolist()) == pair["targets"]

    seqio_tasks.register_dialogsum_spm(str(tiny_spm))
    task = get_provider("dialogsum_spm", "test")
    row = next(task.get_dataset({"inputs": 2048, "targets": 512}, "test", shuffle=False)
               .as_numpy_iterator())
    first = dialogsum.load_dialogsum("test")[0]
    assert row["id"] == b"test_0"
    assert [r.decode() for r in row["references"]] == list(first["references"])
    assert vocabulary.decode(row["targets"].tolist()) == first["targets"]


def test_vocabulary_tool_reads_both_sides_of_the_train_split(data_dir, repo_root):
    spec = importlib.util.spec_from_file_location("train_seq2seq_vocab",
                                                  repo_root / "tools" / "train_seq2seq_vocab.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    texts = list(tool.training_texts("multi30k_en_de_spm"))
    assert len(texts) == 2 * 29000
    assert texts[0] == multi30k.load_multi30k("train")[0]["inputs"]
    assert texts[29000] == multi30k.load_multi30k("train")[0]["targets"]


def test_llmos_tasks_list_shows_the_finetune_tasks(shared_data_dir, tiny_spm, capsys):
    import seqio

    import gin
    from llmos_jax.cli import main as cli

    names = ("sst2_minilm", "conll2003_minilm", "multi30k_en_de_spm", "dialogsum_spm")
    for name in names:
        seqio.TaskRegistry.remove(name)
    try:
        assert cli.main(["tasks", "list", f"--data_dir={shared_data_dir}",
                         f"--gin.register_multi30k_en_de_spm.spm_model='{tiny_spm}'"]) == 0
    finally:
        gin.clear_config()
    out = capsys.readouterr().out
    listed, unavailable = out.split("built-in tasks not available")
    rows = {line.split()[0]: line for line in listed.splitlines() if line.startswith("  ")}
    assert "input_ids (WordPieceVocabulary), label (PassThroughVocabulary)" in rows["sst2_minilm"]
    assert "splits: train, validation, test" in rows["conll2003_minilm"]
    assert "labels (PassThroughVocabulary)" in rows["conll2003_minilm"]
    assert "inputs (SentencePieceVocabulary)" in rows["multi30k_en_de_spm"]
    assert "dialogsum_spm: register_dialogsum_spm.spm_model is not set" in unavailable
