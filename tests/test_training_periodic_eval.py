"""Evaluation inside training (`train.evaluator = @PeriodicEvaluator()`): a tiny encoder
classifier is evaluated with its task's seqio metrics every 2 steps, and the best step by a
metric is exported to model_dir/best, kept across a resume and past the checkpoint rotation.
The metric that picks the best step is a scripted sequence, so the best step is known."""

import json
import uuid

import numpy as np
import pytest
import seqio
from classifier_helpers import CLASSIFIER_GIN, register_classification_task, train_from_gin

from llmos_jax.errors import UserError
from llmos_jax import metrics
from llmos_jax.training.periodic_eval import PeriodicEvaluator, metric_value

GIN = CLASSIFIER_GIN + """
train.num_steps = 8
train.log_every = 2
train.eval_every = 8
train.eval_batches = None
train.checkpoint_every = 2
train.keep_checkpoints = 2
make_optimizer.learning_rate = 3e-2

train.evaluator = @PeriodicEvaluator()
PeriodicEvaluator.every = 2
PeriodicEvaluator.batch_size = 5
PeriodicEvaluator.keep_best_metric = 'scripted'
PeriodicEvaluator.mode = 'max'
"""

# What the scripted metric reports at its 1st, 2nd... call: the best is the 2nd (step 4).
SCRIPTED = [0.5, 0.9, 0.7, 0.6]


def _register(name: str, scripted: list[float]) -> str:
    """The classification task, with a metric that reports `scripted`'s values in turn."""

    def scripted_metric(targets, predictions):
        return {"scripted": scripted.pop(0)}

    return register_classification_task(name, [metrics.accuracy, scripted_metric])


def test_periodic_eval_writes_task_metrics_and_keeps_the_best_step(tmp_path, capsys):
    from llmos_jax.cli.main import main
    from llmos_jax.checkpoints.params_reader import read_our_params

    scripted = list(SCRIPTED)
    task = _register(f"periodic_eval_{uuid.uuid4().hex[:8]}", scripted)
    gin_file = tmp_path / "classifier.gin"
    gin_file.write_text(GIN + f"train.task_name = {task!r}\n")
    model_dir = tmp_path / "run"
    try:
        first = train_from_gin(gin_file, model_dir, "train.stop_after_steps = 4")
        assert first.last_step == 4 and first.best.step == 4 and first.best.value == 0.9
        at_step_4 = read_our_params(str(model_dir))  # The latest checkpoint: step 4.
        second = train_from_gin(gin_file, model_dir)  # Resumes; steps 6 and 8 score lower.
    finally:
        seqio.TaskRegistry.remove(task)
    assert not scripted, "one evaluation every 2 steps: 2, 4, then 6, 8 after the resume"

    # Results of every evaluation, as JSON, JSONL and TensorBoard/metrics.jsonl scalars.
    results_dir = model_dir / "eval_results"
    summaries = {step: json.loads((results_dir / f"validation_step{step}.json").read_text())
                 for step in (2, 4, 6, 8)}
    assert [summaries[s]["results"][task]["scripted"] for s in (2, 4, 6, 8)] == SCRIPTED
    assert all(s["num_examples"] == {task: 24} for s in summaries.values())
    lines = [json.loads(line) for line in (model_dir / "metrics.jsonl").open()]
    logged = {line["step"]: line[f"{task}/accuracy"] for line in lines
              if line["split"] == "eval" and f"{task}/accuracy" in line}
    assert logged == {s: summaries[s]["results"][task]["accuracy"] for s in (2, 4, 6, 8)}
    assert list((model_dir / "tensorboard" / "eval").iterdir())
    # The same accuracy as the trainer's own eval step over the whole split, at step 8.
    assert second.task_metrics[task]["accuracy"] == pytest.approx(
        100 * second.eval_metrics["accuracy"])
    records = [json.loads(line) for line in (results_dir / f"validation_step8_{task}.jsonl").open()]
    assert {r["prediction"] for r in records} == {0, 1}, "a constant classifier proves little"

    # The best step (4) survives the resume and the rotation that deleted its checkpoint.
    assert second.best.step == 4 and second.best.value == 0.9
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "6", "8"]
    best_meta = json.loads((model_dir / "best" / "meta.json").read_text())
    assert best_meta["step"] == 4
    assert best_meta["best"] == {**best_meta["best"], "metric": "scripted", "value": 0.9,
                                 "mode": "max", "step": 4}
    # Self-contained: the task's vocabulary and a card naming the best step travel with it.
    assert best_meta["vocabularies"]["outputs"]["kind"] == "passthrough"
    card = (model_dir / "best" / "MODEL_CARD.md").read_text()
    assert "by scripted = 0.9" in card and "| steps | 4 |" in card
    assert f"| {task}/scripted | 0.9 |" in card
    best = read_our_params(str(model_dir / "best"))
    assert best.keys() == at_step_4.keys()
    for name, value in at_step_4.items():
        np.testing.assert_array_equal(best[name], value, err_msg=name)
    final = read_our_params(str(model_dir))
    assert any(not np.array_equal(final[name], value) for name, value in at_step_4.items())

    # `llmos eval` loads the best export and reproduces step 4's accuracy.
    task = _register(task, [0.0])
    try:
        import gin

        gin.clear_config()
        out = tmp_path / "best_eval"
        assert main(["eval", f"--gin_file={gin_file}", f"--checkpoint={model_dir / 'best'}",
                     f"--output_dir={out}"]) == 0
    finally:
        gin.clear_config()
        seqio.TaskRegistry.remove(task)
    again = json.loads((out / "eval_results" / "validation_step4.json").read_text())
    assert again["results"][task]["accuracy"] == summaries[4]["results"][task]["accuracy"]
    capsys.readouterr()


def test_metric_value_names_the_metric_or_the_choices():
    results = {"a": {"accuracy": 90.0, "f1": 80.0}, "b": {"accuracy": 70.0}}
    assert metric_value(results, "f1") == 80.0
    assert metric_value(results, "b/accuracy") == 70.0
    with pytest.raises(UserError, match=r"several tasks report metric 'accuracy'; name one of "
                                        r"\['a/accuracy', 'a/f1', 'b/accuracy'\]"):
        metric_value(results, "accuracy")
    with pytest.raises(UserError, match=r"keep_best_metric='bleu': the evaluation reports no"):
        metric_value(results, "bleu")


def test_periodic_evaluator_refuses_bad_settings():
    with pytest.raises(UserError, match=r"PeriodicEvaluator.mode='median'"):
        PeriodicEvaluator(mode="median")
    with pytest.raises(UserError, match=r"PeriodicEvaluator.every=0 must be positive"):
        PeriodicEvaluator(every=0)


def test_a_lora_runs_best_export_holds_merged_weights(tmp_path):
    """best/ serves like export/: the adapters folded into the base, no lora_* tensors."""
    from llmos_jax.checkpoints.params_reader import read_our_params

    scripted = [0.5, 0.9]  # the best is the last step, so best/ and export/ hold the same step
    task = _register(f"periodic_eval_lora_{uuid.uuid4().hex[:8]}", scripted)
    gin_file = tmp_path / "classifier_lora.gin"
    gin_file.write_text(GIN + f"train.task_name = {task!r}\n" + """
train.num_steps = 4
EncoderConfig.scan_layers = False
train.lora = @LoraConfig()
LoraConfig.rank = 2
LoraConfig.also_train = ['^classifier/']
make_optimizer.learning_rate = 0.05
""")
    try:
        result = train_from_gin(gin_file, tmp_path / "run")
    finally:
        seqio.TaskRegistry.remove(task)
    assert result.best.step == 4 and not scripted
    best = read_our_params(str(tmp_path / "run" / "best"))
    export = read_our_params(str(tmp_path / "run" / "export"))
    assert not [name for name in best if "lora" in name]
    assert sorted(best) == sorted(export)
    for name in best:
        np.testing.assert_array_equal(best[name], export[name], err_msg=name)
