"""`llmos eval` end to end: train a tiny encoder classifier with `train`, then evaluate its
checkpoint and its export through the CLI; the accuracy must be the one the training run's
own eval step reported. Also the errors: no checkpoint, a model that does not fit, a task
with another vocabulary."""

import json
import uuid

import numpy as np
import pytest
import seqio
from classifier_helpers import CLASSIFIER_GIN, register_classification_task, train_from_gin

from llmos_jax.cli.main import main
from llmos_jax import metrics

GIN = CLASSIFIER_GIN + """
train.num_steps = 12
train.log_every = 4
train.eval_every = 12
train.eval_batches = None
train.checkpoint_every = 12
make_optimizer.learning_rate = 3e-2
"""


def _register(name, vocab_size=32):
    # Some rows longer than the sequence length: eval must cut them as training did.
    return register_classification_task(name, [metrics.accuracy, metrics.macro_f1], vocab_size)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(gin file, model_dir, task name, the training run's eval accuracy)."""
    task = _register(f"cli_eval_{uuid.uuid4().hex[:8]}")
    other = _register(f"cli_eval_other_vocab_{uuid.uuid4().hex[:8]}", vocab_size=40)
    root = tmp_path_factory.mktemp("cli_eval")
    gin_file = root / "classifier.gin"
    gin_file.write_text(GIN + f"train.task_name = {task!r}\n")
    result = train_from_gin(gin_file, root / "run")
    assert result.last_step == 12 and result.eval_metrics["examples"] == 24
    yield gin_file, root / "run", task, other, result.eval_metrics["accuracy"]
    seqio.TaskRegistry.remove(task)
    seqio.TaskRegistry.remove(other)


def run_eval(*flags):
    import gin

    gin.clear_config()
    try:
        return main(["eval", *flags])
    finally:
        gin.clear_config()


def test_eval_reports_the_accuracy_of_the_training_eval_step(trained, tmp_path, capsys):
    gin_file, model_dir, task, _, train_accuracy = trained
    assert run_eval(f"--gin_file={gin_file}", f"--checkpoint={model_dir}") == 0
    printed = capsys.readouterr().out
    summary = json.loads((model_dir / "eval_results" / "validation_step12.json").read_text())
    accuracy = summary["results"][task]["accuracy"]
    assert accuracy == pytest.approx(100 * train_accuracy)
    assert summary["num_examples"] == {task: 24}
    assert summary["results"][task]["macro_f1"] > 0 and f'"accuracy": {accuracy}' in printed
    records = [json.loads(line) for line in
               (model_dir / "eval_results" / f"validation_step12_{task}.jsonl").open()]
    assert len(records) == 24 and {r["target"] for r in records} == {0, 1}
    assert {r["prediction"] for r in records} == {0, 1}, "a constant classifier proves little"
    assert 100 * np.mean([r["target"] == r["prediction"] for r in records]) == pytest.approx(accuracy)
    assert list((model_dir / "tensorboard" / "eval").iterdir())

    # The export holds the same parameters: same numbers, written where asked.
    out = tmp_path / "export_eval"
    assert run_eval(f"--gin_file={gin_file}", f"--checkpoint={model_dir / 'export'}",
                    f"--output_dir={out}", "--batch_size=5", "--max_examples=10") == 0
    from_export = json.loads((out / "eval_results" / "validation_step12.json").read_text())
    assert from_export["num_examples"] == {task: 10}
    expected = 100 * np.mean([r["target"] == r["prediction"] for r in records[:10]])
    assert from_export["results"][task]["accuracy"] == pytest.approx(expected)


def test_eval_errors_name_the_flag_and_the_fix(trained, tmp_path, capsys):
    gin_file, model_dir, _, other, _ = trained
    (tmp_path / "empty").mkdir()
    cases = [
        ((f"--gin_file={gin_file}", f"--checkpoint={tmp_path / 'empty'}"),
         "holds no checkpoint"),
        ((f"--gin_file={gin_file}", f"--checkpoint={tmp_path / 'missing'}"),
         "is not a directory"),
        ((f"--gin_file={gin_file}",), "needs --checkpoint"),
        ((f"--gin_file={gin_file}", f"--checkpoint={model_dir}", "--gin.EncoderConfig.embed_dim=32"),
         "does not fit the gin file's model"),
        ((f"--gin_file={gin_file}", f"--checkpoint={model_dir}", f"--task={other}"),
         "was trained with vocabulary"),
        ((f"--gin_file={gin_file}", f"--checkpoint={model_dir}", "--split=test"),
         "--split='test'"),
        ((f"--gin_file={gin_file}", f"--checkpoint={model_dir}", "--batch_size=0"),
         "--batch_size=0 must be positive"),
    ]
    for flags, message in cases:
        assert run_eval(*flags) == 2, flags
        error = capsys.readouterr().err
        assert error.startswith("llmos: error: ") and message in error, (flags, error)
