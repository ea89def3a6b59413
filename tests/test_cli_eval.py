"""`llmos eval` end to end: train a tiny encoder classifier with `train`, then evaluate its
checkpoint and its export through the CLI; the accuracy must be the one the training run's
own eval step reported. Also the errors: no checkpoint, a model that does not fit, a task
with another vocabulary."""

import json
import uuid

import numpy as np
import pytest
import seqio
import tensorflow as tf

from llmos_jax.cli.main import main
from llmos_jax.data.finetune_tasks.seqio_tasks import (
    class_label_id,
    label_as_target_text,
)
from llmos_jax.evaluation import metrics

GIN = """
EncoderConfig.vocab_size = 32
EncoderConfig.num_layers = 1
EncoderConfig.embed_dim = 16
EncoderConfig.num_heads = 2
EncoderConfig.max_len = 8
EncoderConfig.position_embedding = 'learned'
EncoderConfig.norm = 'layernorm'
EncoderConfig.use_bias = True
EncoderConfig.dropout_rate = 0.0
train.model_config = @EncoderConfig()

train.objective = @SequenceClassification()
SequenceClassification.pooling = 'mean'
train.batches = @ExampleBatches
train.pack = False
train.sequence_length = 8
train.global_batch_size = 8
train.num_steps = 12
train.log_every = 4
train.eval_every = 12
train.eval_batches = None
train.checkpoint_every = 12
train.progress_bar = False
MeshConfig.data = 2
MeshConfig.fsdp = -1
MeshConfig.tensor = 1
train.mesh_config = @MeshConfig()
make_optimizer.learning_rate = 3e-2
make_optimizer.weight_decay = 0.0
"""


def _register(name, vocab_size=32):
    rng = np.random.default_rng(0)
    # Some rows longer than the sequence length: eval must cut them as training did.
    ids = [[1] + rng.integers(4, 32, rng.integers(2, 11)).tolist() for _ in range(64)]
    labels = [int(row[1] < 18) for row in ids]

    def dataset(split, shuffle_files, seed=None):
        rows = slice(0, 40) if split == "train" else slice(40, 64)
        return tf.data.Dataset.from_tensor_slices({
            "input_ids": tf.ragged.constant(ids[rows], dtype=tf.int32),
            "label": tf.constant(labels[rows], tf.int32)})

    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset, ["train", "validation"]),
        preprocessors=[label_as_target_text], postprocess_fn=class_label_id,
        metric_fns=[metrics.accuracy, metrics.macro_f1],
        output_features={"input_ids": seqio.Feature(seqio.PassThroughVocabulary(vocab_size),
                                                    add_eos=False)})
    return name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(gin file, model_dir, task name, the training run's eval accuracy)."""
    import gin
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training import trainer

    task = _register(f"cli_eval_{uuid.uuid4().hex[:8]}")
    other = _register(f"cli_eval_other_vocab_{uuid.uuid4().hex[:8]}", vocab_size=40)
    root = tmp_path_factory.mktemp("cli_eval")
    gin_file = root / "classifier.gin"
    gin_file.write_text(GIN + f"train.task_name = {task!r}\n")
    gin.clear_config()
    try:
        parse_gin([str(gin_file)], [])
        result = trainer.train(model_dir=str(root / "run"))
    finally:
        gin.clear_config()
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
