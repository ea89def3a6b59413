"""The split evaluator: a tiny FunctionSource Task, fake model functions, JSON and TensorBoard output."""

import functools
import json
import math

import pytest
import seqio

from llmos_jax.data.sources import FunctionSource
from llmos_jax.errors import UserError
from llmos_jax import metrics
from llmos_jax.evaluation.evaluator import evaluate
from llmos_jax.monitoring.metrics_writer import METRICS_FILENAME, TENSORBOARD_DIRNAME

RECORDS = [
    {"inputs": "one plus one", "targets": "Two"},
    {"inputs": "two plus two", "targets": "Four"},
    {"inputs": "one plus two", "targets": "Three"},
    {"inputs": "two plus three", "targets": "Five"},
    {"inputs": "zero plus zero", "targets": "Zero"},
]
VOCABULARY = seqio.ByteVocabulary()


def _lowercase(text, example=None, is_target=False):
    del example, is_target
    return text.strip().lower()


def _register(name, *, keep_text=True, metric_fns=(metrics.accuracy, metrics.perplexity),
              splits=("validation",)):
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=FunctionSource(lambda split: RECORDS, list(splits), features=("inputs", "targets")),
        preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=keep_text)],
        output_features={k: seqio.Feature(VOCABULARY, add_eos=False) for k in ("inputs", "targets")},
        postprocess_fn=_lowercase,
        metric_fns=list(metric_fns),
    )
    return name


ANSWERS = {"one plus one": " TWO ", "two plus two": "four", "one plus two": "three",
           "two plus three": "six", "zero plus zero": "zero"}


def _predict(batch):
    """Right on 4 of 5; answers half as text, half as token ids."""
    predictions = []
    for index, example in enumerate(batch):
        answer = ANSWERS[VOCABULARY.decode(example["inputs"].tolist())]
        predictions.append(answer if index % 2 else VOCABULARY.encode(answer))
    return predictions


def _score(batch):
    # Every target token gets log-likelihood -log(4): perplexity 4.
    return [(-math.log(4) * len(ex["targets"]), len(ex["targets"])) for ex in batch]


@pytest.mark.parametrize("keep_text", [True, False])
def test_metrics_over_the_whole_split_in_order(keep_text):
    name = _register(f"eval_arith_{keep_text}", keep_text=keep_text)
    results = evaluate(name, "validation", predict_fn=_predict, score_fn=_score, batch_size=2)
    assert results == {name: {"accuracy": pytest.approx(80.0), "perplexity": pytest.approx(4.0),
                              "nll_per_token": pytest.approx(math.log(4))}}


def test_writes_json_predictions_and_tensorboard(tmp_path):
    name = _register("eval_arith_written")
    evaluate(name, "validation", predict_fn=_predict, score_fn=_score, output_dir=tmp_path, step=7)

    summary = json.loads((tmp_path / "eval_results" / "validation_step7.json").read_text())
    assert summary["step"] == 7 and summary["num_examples"] == {name: 5}
    assert summary["results"][name]["accuracy"] == pytest.approx(80.0)

    lines = (tmp_path / "eval_results" / f"validation_step7_{name}.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["target"] == "two" and first["prediction"] == "two"
    assert first["score"] == pytest.approx([-3 * math.log(4), 3])
    assert json.loads(lines[3])["prediction"] == "six"

    record = json.loads((tmp_path / METRICS_FILENAME).read_text().splitlines()[-1])
    assert record["split"] == "eval" and record["step"] == 7
    assert record[f"{name}/accuracy"] == pytest.approx(80.0)
    assert list((tmp_path / TENSORBOARD_DIRNAME / "eval").glob("events*"))


def test_other_splits_are_recorded_under_their_own_name(tmp_path):
    name = _register("eval_arith_test_split", splits=("validation", "test"))
    evaluate(name, "test", predict_fn=_predict, score_fn=_score, output_dir=tmp_path, step=3)
    assert (tmp_path / "eval_results" / "test_step3.json").exists()
    record = json.loads((tmp_path / METRICS_FILENAME).read_text().splitlines()[-1])
    assert record["split"] == "eval_test" and record["step"] == 3
    assert list((tmp_path / TENSORBOARD_DIRNAME / "eval_test").glob("events*"))
    assert not (tmp_path / TENSORBOARD_DIRNAME / "eval").exists()


def test_mixture_evaluates_each_task():
    first = _register("eval_mix_a", metric_fns=[metrics.accuracy])
    second = _register("eval_mix_b", metric_fns=[metrics.bleu, metrics.rouge])
    seqio.MixtureRegistry.remove("eval_mix")
    seqio.MixtureRegistry.add("eval_mix", [(first, 1.0), (second, 1.0)])
    results = evaluate("eval_mix", "validation", predict_fn=_predict)
    assert results[first] == {"accuracy": pytest.approx(80.0)}
    assert set(results[second]) == {"bleu", "rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert results[second]["rouge1"] == pytest.approx(80.0)


def test_gin_wrapped_metric_functions_keep_their_seqio_signature():
    import gin

    name = _register("eval_gin", metric_fns=[gin.get_configurable("llmos_jax.evaluation.accuracy")])
    assert evaluate(name, "validation", predict_fn=_predict) == {name: {"accuracy": pytest.approx(80.0)}}


def test_bad_usage_is_reported():
    name = _register("eval_arith_errors")
    with pytest.raises(UserError, match=r"need a score_fn"):
        evaluate(name, "validation", predict_fn=_predict)
    with pytest.raises(UserError, match=r"returned 1 outputs for a batch of 2"):
        evaluate(name, "validation", predict_fn=lambda batch: ["x"], score_fn=_score, batch_size=2)
    with pytest.raises(UserError, match="has no such split"):
        evaluate(name, "test", predict_fn=_predict, score_fn=_score)
    with pytest.raises(UserError, match="no metric functions"):
        evaluate(_register("eval_no_metrics", metric_fns=[]), "validation", predict_fn=_predict)
