"""LMBatches.pipeline='numpy': the seqio pipeline's batches, without TensorFlow."""

import pathlib
import subprocess
import sys
import textwrap

import gin
import numpy as np
import pytest
import seqio

from llmos_jax.data import catalog
from llmos_jax.data.char_corpus import SHAKESPEARE, next_token_windows
from llmos_jax.data.lm_batches import LMBatches
from llmos_jax.errors import UserError
from llmos_jax.models.config import TransformerConfig
from llmos_jax.training.run_metadata import describe_run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 4
# 1,000 characters: train is 900 characters + EOS = 901 tokens, validation 101.
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak!\n"
        * 20)[:1000]


@pytest.fixture
def corpus(tmp_path):
    """TEXT as tiny_shakespeare_char for both pipelines; the catalog's own Task afterwards."""
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    catalog.register_tiny_shakespeare_char(path=str(path))
    with gin.unlock_config():
        gin.bind_parameter("CharCorpus.path", str(path))
    yield path
    with gin.unlock_config():
        gin.clear_config()
    seqio.TaskRegistry.remove(SHAKESPEARE)  # re-registered from the catalog on next use


def batches(pipeline: str, split: str = "train", length: int = 15, seed: int = 3,
            random_windows: bool = False) -> LMBatches:
    return LMBatches(SHAKESPEARE, split, length, BATCH, seed=seed, pack=False,
                     feature_converter="next_token", random_windows=random_windows,
                     pipeline=pipeline, process_index=0, process_count=1)


def assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


# 901 % 16 = 5 and 901 % 18 = 1: the last train window is partial, and at
# length 17 it holds a single token (a row with no target at all).
@pytest.mark.parametrize("length", [15, 17])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_numpy_pipeline_equals_seqio_pipeline(corpus, split, length):
    seqio_data, numpy_data = batches("seqio", split, length), batches("numpy", split, length)
    assert not numpy_data.reads_seqio and seqio_data.reads_seqio
    assert numpy_data.vocabulary == seqio_data.vocabulary.table
    assert numpy_data.num_examples == seqio_data.num_examples
    for step in (0, 1, 7, 30):  # 30 wraps past an epoch of the train split
        assert_same(numpy_data.batch_at(step), seqio_data.batch_at(step))
    for ours, theirs in zip(numpy_data.eval_batches(), seqio_data.eval_batches(), strict=True):
        assert_same(ours, theirs)


def test_random_windows_equal_and_pure_in_the_step(corpus):
    seqio_data = batches("seqio", random_windows=True)
    first, second = batches("numpy", random_windows=True), batches("numpy", random_windows=True)
    # Resuming at step k asks a fresh object for step k: it must see what the first run saw.
    for step in (0, 5, 123):
        assert_same(first.batch_at(step), seqio_data.batch_at(step))
        assert_same(second.batch_at(step), first.batch_at(step))
    other_seed = batches("numpy", seed=4, random_windows=True)
    assert not np.array_equal(other_seed.batch_at(5)["decoder_input_tokens"],
                              first.batch_at(5)["decoder_input_tokens"])


def test_a_checkpoint_from_one_pipeline_resumes_on_the_other(corpus):
    """The run metadata a resume checks is the same whichever pipeline made the batches."""
    config = TransformerConfig(vocab_size=68, num_layers=1, num_heads=1, embed_dim=8, max_len=15)

    def meta(data):
        return describe_run(config, data.vocabulary, task_name=SHAKESPEARE, seed=3,
                            global_batch_size=BATCH, sequence_length=15, pack=False)

    assert meta(batches("numpy")) == meta(batches("seqio"))


def test_next_token_windows_pad_the_last_window():
    rows = next_token_windows(np.arange(1, 8, dtype=np.int32), window=3)
    np.testing.assert_array_equal(rows["decoder_input_tokens"], [[1, 2], [4, 5], [7, 0]])
    np.testing.assert_array_equal(rows["decoder_target_tokens"], [[2, 3], [5, 6], [0, 0]])
    np.testing.assert_array_equal(rows["decoder_loss_weights"], [[1, 1], [1, 1], [0, 0]])


def test_numpy_pipeline_refuses_what_it_does_not_cover(corpus):
    with pytest.raises(UserError, match="LMBatches.pipeline = 'seqio'"):
        LMBatches("stdlib_bytes", "train", 16, BATCH, pipeline="numpy", pack=False,
                  feature_converter="next_token", process_index=0, process_count=1)
    with pytest.raises(UserError, match="next_token"):
        LMBatches(SHAKESPEARE, "train", 16, BATCH, pipeline="numpy", pack=True,
                  process_index=0, process_count=1)
    with pytest.raises(UserError, match="'seqio', 'numpy'"):
        batches("tf")


def test_train_gin_parses_and_reads_data_without_tensorflow(tmp_path):
    """`llmos train`'s parse defers the seqio modules; a config naming one still parses."""
    code = textwrap.dedent(f"""
        import sys
        from llmos_jax.cli.gin_config import CONFIGURABLE_MODULES, parse_gin
        gin_file = {str(REPO_ROOT / 'experiments/shakespeare_char/shakespeare_char_cpu.gin')!r}
        parse_gin([gin_file], [], defer_seqio=True)
        from llmos_jax.training.train_config import TrainConfig
        config = TrainConfig.from_gin()
        data = config.batches(config.task_name, 'train', config.sequence_length,
                              config.global_batch_size, seed=config.seed, pack=config.pack)
        assert data.batch_at(0)['decoder_input_tokens'].shape == (12, 64)
        heavy = {{'tensorflow', 'seqio', 'torch'}} & set(sys.modules)
        assert not heavy, heavy
        parse_gin([gin_file], ["register_tiny_shakespeare_char.train_fraction = 0.8"],
                  defer_seqio=True)
        assert 'tensorflow' in sys.modules
        import gin
        assert gin.query_parameter('register_tiny_shakespeare_char.train_fraction') == 0.8
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
