"""End to end through gin and `train`: a tiny encoder classifier, then a warm-started, frozen fine-tune.

Run 1 trains a sequence classifier on a synthetic feature-dict task
(ExampleBatches) and exports it. Run 2 starts from that export with a
3-class head (re-initialised), the encoder frozen and the head at 10x the
learning rate: the encoder must come out bit-identical, the head must move,
and warm_start.json must name what was loaded and what was fresh.
"""

import json
import uuid

import numpy as np
import pytest
import seqio
import tensorflow as tf
from classifier_helpers import CLASSIFIER_GIN, train_from_gin

GIN = CLASSIFIER_GIN + """
train.num_steps = 8
train.log_every = 1
train.eval_every = 8
train.eval_batches = None
train.checkpoint_every = 8
make_optimizer.learning_rate = 1e-2
"""


@pytest.fixture(scope="module")
def task_name():
    name = f"e2e_classify_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    ids = [[1] + rng.integers(4, 32, rng.integers(2, 7)).tolist() for _ in range(48)]
    labels = [int(row[1] < 18) for row in ids]

    def dataset(split, shuffle_files, seed=None):
        rows = slice(0, 40) if split == "train" else slice(40, 48)
        return tf.data.Dataset.from_tensor_slices({
            "input_ids": tf.ragged.constant(ids[rows], dtype=tf.int32),
            "label": tf.constant(labels[rows], tf.int32)})

    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset, ["train", "validation"]),
                           preprocessors=[], output_features={
                               "input_ids": seqio.Feature(seqio.PassThroughVocabulary(32),
                                                          add_eos=False)})
    yield name
    seqio.TaskRegistry.remove(name)


def run_train(tmp_path, model_dir, *bindings):
    gin_file = tmp_path / "classifier.gin"
    gin_file.write_text(GIN)
    return train_from_gin(gin_file, model_dir, *bindings)


def exported(model_dir):
    from llmos_jax.checkpoints.checkpointer import load_exported_params
    from llmos_jax.checkpoints.params_reader import flat_params
    return {k: np.asarray(v) for k, v in flat_params(load_exported_params(model_dir / "export")).items()}


def test_train_a_classifier_then_warm_start_a_frozen_fine_tune(tmp_path, task_name):
    first = run_train(tmp_path, tmp_path / "first", f"train.task_name = {task_name!r}")
    assert first.last_step == 8 and not first.interrupted and first.samples == []
    assert first.train_losses[8] < first.train_losses[1]
    assert set(first.eval_metrics) == {"loss", "accuracy", "examples"}
    assert first.eval_metrics["examples"] == 8  # the whole validation split, once
    records = [json.loads(line) for line in (tmp_path / "first" / "metrics.jsonl").open()]
    assert "mfu" not in records[0] and records[0]["accuracy"] >= 0

    second = run_train(
        tmp_path, tmp_path / "second", f"train.task_name = {task_name!r}",
        "SequenceClassification.num_classes = 3",
        "train.init_from = @InitFrom()",
        f"InitFrom.checkpoint = {str(tmp_path / 'first' / 'export')!r}",
        "InitFrom.reinit_mismatched = True",
        "make_optimizer.frozen_patterns = ['^encoder/']",
        "make_optimizer.learning_rate_multipliers = {'^classifier/': 10.0}")
    report = json.loads((tmp_path / "second" / "warm_start.json").read_text())
    assert report["reinitialised"] == ["classifier/dense/bias", "classifier/dense/kernel"]
    assert report["fresh"] == report["reinitialised"]
    assert all(name.startswith("encoder/") for name in report["loaded"])
    assert second.warm_start_report.loaded == report["loaded"]

    before, after = exported(tmp_path / "first"), exported(tmp_path / "second")
    for name in report["loaded"]:
        np.testing.assert_array_equal(after[name], before[name])  # frozen: not one bit moved
    assert after["classifier/dense/kernel"].shape == (16, 3)
    assert second.train_losses[8] < second.train_losses[1]
