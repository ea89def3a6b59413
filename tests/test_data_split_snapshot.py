"""Split snapshots: LMBatches from a snapshot equal LMBatches from seqio, and need no TensorFlow."""

import json
import pathlib
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.data.vocabulary_tables import CharacterTable, SentencePieceTable
from llmos_jax.data.lm_batches import LMBatches
from llmos_jax.data.registry import register_lm_task
from llmos_jax.data.sources import FunctionSource
from llmos_jax.errors import UserError
from llmos_jax.training.run_metadata import describe_vocabulary

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LENGTH = 16
BATCH = 4
TEXT = {"train": "to be or not to be, that is the question: " * 12,
        "validation": "whether 'tis nobler in the mind to suffer " * 3}

ABSENT = ("seqio", "tensorflow", "tensorflow_text", "tf_keras", "keras")


@pytest.fixture(scope="module")
def site_without_seqio(tmp_path_factory) -> pathlib.Path:
    """A site-packages view (symlinks) without seqio and TensorFlow, as on a GPU image."""
    import site

    view = tmp_path_factory.mktemp("site_without_seqio")
    for packages in map(pathlib.Path, site.getsitepackages()):
        for entry in packages.iterdir():
            root = entry.name.split("-")[0].split(".")[0].lower()
            if root not in ABSENT and not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    return view


@pytest.fixture(scope="module")
def task_name() -> str:
    vocabulary = CharacterVocabulary(characters="".join(sorted(set("".join(TEXT.values())))))
    return register_lm_task(f"snapshot_chars_{uuid.uuid4().hex[:8]}",
                            FunctionSource(lambda split: [TEXT[split]], tuple(TEXT)), vocabulary)


def _batches(task_name, split, **kwargs) -> LMBatches:
    return LMBatches(task_name, split, LENGTH, BATCH, seed=5, pack=False,
                     feature_converter="next_token", process_index=0, process_count=1, **kwargs)


@pytest.fixture(scope="module")
def snapshot_dir(task_name, tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("snapshot")
    for split in TEXT:
        _batches(task_name, split).save_snapshot(str(directory))
    return directory


@pytest.mark.parametrize("random_windows", [False, True])
def test_snapshot_batches_equal_seqio_batches(task_name, snapshot_dir, random_windows):
    from_seqio = _batches(task_name, "train", random_windows=random_windows)
    from_snapshot = _batches(task_name, "train", random_windows=random_windows,
                             snapshot_dir=str(snapshot_dir))

    assert from_snapshot.num_examples == from_seqio.num_examples > BATCH
    for step in (0, 1, 7, 1000):
        expected, got = from_seqio.batch_at(step), from_snapshot.batch_at(step)
        assert set(got) == set(expected)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
            assert got[key].dtype == expected[key].dtype
    for expected, got in zip(from_seqio.eval_batches(), from_snapshot.eval_batches(), strict=True):
        np.testing.assert_array_equal(got["decoder_target_tokens"],
                                      expected["decoder_target_tokens"])
    assert from_snapshot.truncation == from_seqio.truncation


def test_snapshot_vocabulary_maps_and_describes_like_the_seqio_one(task_name, snapshot_dir):
    seqio_vocabulary = _batches(task_name, "validation").vocabulary
    table = _batches(task_name, "validation", snapshot_dir=str(snapshot_dir)).vocabulary

    assert isinstance(table, CharacterTable)
    text = "to be, or? zq"
    assert table.encode(text) == seqio_vocabulary.encode(text)
    # A padded model vocabulary's id, then EOS: seqio decodes the first as UNK and stops at EOS.
    ids = table.encode(text) + [table.vocab_size + 2, table.eos_id] + table.encode("be")
    expected = "".join(c if c in table.characters else "\ufffd" for c in text) + "\ufffd"
    assert table.decode(ids) == seqio_vocabulary.decode(ids) == expected
    assert table.eos_id == seqio_vocabulary.eos_id and table.vocab_size == seqio_vocabulary.vocab_size
    # Checkpoint metadata must match, or a snapshot-trained run would not resume on seqio.
    assert describe_vocabulary(table) == describe_vocabulary(seqio_vocabulary)


def test_snapshot_made_with_other_settings_is_refused_by_name(task_name, snapshot_dir):
    with pytest.raises(UserError, match=r"feature_lengths: snapshot \{'targets': 17\}, this run "
                                        r"\{'targets': 9\}.*snapshot_splits.py"):
        LMBatches(task_name, "train", 8, BATCH, pack=False, feature_converter="next_token",
                  process_index=0, process_count=1, snapshot_dir=str(snapshot_dir))
    with pytest.raises(UserError, match="LMBatches.snapshot_dir=.* has no snapshot of split 'test'"):
        _batches(task_name, "test", snapshot_dir=str(snapshot_dir))


def test_corrupt_snapshot_record_is_a_user_error(task_name, snapshot_dir, tmp_path):
    for name in ("train.npz", "train.json"):
        (tmp_path / name).write_bytes((snapshot_dir / name).read_bytes())
    (tmp_path / "train.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="is not a readable split snapshot"):
        _batches(task_name, "train", snapshot_dir=str(tmp_path))


def test_sentencepiece_snapshot_batches_and_vocabulary_equal_seqio(tmp_path):
    import seqio

    from llmos_jax.data.sentencepiece_vocab import train_sentencepiece

    lines = [line for text in TEXT.values() for line in text.split(", ")]
    model_path = train_sentencepiece(lines, tmp_path / "spm", 36, character_coverage=1.0,
                                     num_threads=1)
    vocabulary = seqio.SentencePieceVocabulary(str(model_path))
    name = register_lm_task(f"snapshot_spm_{uuid.uuid4().hex[:8]}",
                            FunctionSource(lambda split: [TEXT[split]], tuple(TEXT)), vocabulary)
    from_seqio = _batches(name, "train", random_windows=True)
    from_seqio.save_snapshot(str(tmp_path / "snap"))
    from_snapshot = _batches(name, "train", random_windows=True, snapshot_dir=str(tmp_path / "snap"))

    for key, expected in from_seqio.batch_at(3).items():
        np.testing.assert_array_equal(from_snapshot.batch_at(3)[key], expected)
    table = from_snapshot.vocabulary
    assert isinstance(table, SentencePieceTable)
    text = "to be or not, whether"
    assert table.encode(text) == list(vocabulary.encode(text))
    ids = table.encode(text) + [table.vocab_size + 5, table.eos_id] + table.encode("be")
    assert table.decode(ids) == vocabulary.decode(ids)
    assert (table.eos_id, table.unk_id, table.vocab_size) == (
        vocabulary.eos_id, vocabulary.unk_id, vocabulary.vocab_size)
    assert describe_vocabulary(table) == describe_vocabulary(vocabulary)


def test_byte_snapshot_batches_and_vocabulary_equal_seqio(tmp_path):
    import seqio

    from llmos_jax.data import text_tasks
    from llmos_jax.data.vocabulary_tables import ByteTable

    corpus = tmp_path / "bytes.txt"
    corpus.write_text("Some bytes, é and 字.\n\nMore bytes " * 8 + "\n\nthe end\n")
    byte_task = text_tasks.register_text_file_task(f"snapshot_bytes_{uuid.uuid4().hex[:8]}",
                                                   corpus, validation_fraction=0.2)
    for split in ("train", "validation"):
        LMBatches(byte_task, split, LENGTH, 2, process_index=0,
                  process_count=1).save_snapshot(str(tmp_path / "snap"))
    from_seqio = LMBatches(byte_task, "train", LENGTH, 2, process_index=0, process_count=1)
    from_snapshot = LMBatches(byte_task, "train", LENGTH, 2, process_index=0, process_count=1,
                              snapshot_dir=str(tmp_path / "snap"))
    for step in (0, 3):
        for key, expected in from_seqio.batch_at(step).items():
            np.testing.assert_array_equal(from_snapshot.batch_at(step)[key], expected)

    table, vocabulary = from_snapshot.vocabulary, seqio.ByteVocabulary()
    assert isinstance(table, ByteTable)
    assert table.encode("é字 x") == vocabulary.encode("é字 x")
    # Specials dropped, an id past the vocabulary is UNK (dropped), the half of a cut
    # multi-byte character is skipped, and decoding stops at EOS.
    ids = [0, *table.encode("ab"), 900, 2, table.encode("é")[0], *table.encode("c"), 1,
           *table.encode("never")]
    assert table.decode(ids) == vocabulary.decode(ids) == "abc"
    assert (table.eos_id, table.unk_id, table.vocab_size) == (
        vocabulary.eos_id, vocabulary.unk_id, vocabulary.vocab_size)
    assert describe_vocabulary(table) == describe_vocabulary(vocabulary)


def test_byte_vocabularies_with_extra_ids_cannot_be_snapshotted(tmp_path):
    import seqio

    from llmos_jax.data.vocabulary_tables import table_of

    with pytest.raises(UserError, match="uses ByteVocabulary with extra ids; split snapshots "
                                        "support character, byte and SentencePiece"):
        table_of(seqio.ByteVocabulary(extra_ids=3), "span_corruption")


def test_llmos_train_runs_from_a_snapshot_without_seqio_or_tensorflow(snapshot_dir, task_name,
                                                                     site_without_seqio, tmp_path):
    gin_file = tmp_path / "run.gin"
    gin_file.write_text(textwrap.dedent(f"""
        TransformerConfig.vocab_size = 40
        TransformerConfig.num_layers = 1
        TransformerConfig.embed_dim = 16
        TransformerConfig.num_heads = 2
        TransformerConfig.max_len = {LENGTH}
        TransformerConfig.position_embedding = 'learned'
        train.model_config = @TransformerConfig()
        train.task_name = '{task_name}'
        train.pack = False
        LMBatches.feature_converter = 'next_token'
        LMBatches.random_windows = True
        LMBatches.snapshot_dir = '{snapshot_dir}'
        train.sequence_length = {LENGTH}
        train.global_batch_size = 8
        train.seed = 5
        train.num_steps = 4
        train.log_every = 1
        train.eval_every = 2
        train.checkpoint_every = 2
        train.sample_prompts = ['to ']
        train.sample_new_tokens = 4
        train.progress_bar = False
        MeshConfig.fsdp = -1
        train.mesh_config = @MeshConfig()
    """))
    model_dir = tmp_path / "model"
    script = textwrap.dedent(f"""
        import site, sys
        sys.path = [p for p in sys.path if "-packages" not in p]
        site.addsitedir({str(site_without_seqio)!r})
        for name in {ABSENT!r}:
            try:
                __import__(name)
                raise SystemExit(f"{{name}} is still importable")
            except ImportError:
                pass
        from llmos_jax.cli.main import main
        code = main(["train", "--gin_file={gin_file}", "--model_dir={model_dir}"])
        assert "seqio" not in sys.modules and "tensorflow" not in sys.modules
        sys.exit(code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any(r["split"] == "eval" for r in records)
    meta = json.loads((model_dir / "export" / "meta.json").read_text())
    seqio_vocabulary = _batches(task_name, "train").vocabulary
    assert meta["vocabulary"] == describe_vocabulary(seqio_vocabulary)
