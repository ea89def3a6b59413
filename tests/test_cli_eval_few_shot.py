"""`llmos eval --task=` on a few-shot multiple-choice task: a tiny decoder trained in process
is scored on every (example, choice) of a 2-shot prompt, and both accuracies follow from the
per-choice log-likelihoods it wrote."""

import json

import gin
import numpy as np
import pytest
import seqio
from tiny_runs import character_task, tiny_run_bindings, train_in_process

from llmos_jax.cli.main import main
from llmos_jax.data.few_shot import register_multiple_choice_task
from llmos_jax.metrics.multiple_choice import chosen_answers

TRAIN = [{"sentence": s, "label": y} for s, y in [
    ("the cat sat", 0), ("the dog ran", 1), ("the cat ran", 0), ("the dog sat", 1)]]
EVAL = [{"sentence": s, "label": y} for s, y in [
    ("the cat sat on the mat", 0), ("the dog ran to the barn", 1), ("the red cat", 0)]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_llmos_eval_scores_a_two_shot_multiple_choice_task(tmp_path, capsys):
    with character_task("few_shot_cli") as (lm_task, vocabulary):
        bindings = tiny_run_bindings(2, f"train.task_name = {lm_task!r}",
                                     f"TransformerConfig.vocab_size = {vocabulary.vocab_size}",
                                     "TransformerConfig.max_len = 128")
        gin_file = tmp_path / "run.gin"
        gin_file.write_text("\n".join(bindings) + "\n")
        train_in_process(tmp_path / "run", bindings)
        name = register_multiple_choice_task(
            "few_shot_cli_mc", write_jsonl(tmp_path / "train.jsonl", TRAIN),
            write_jsonl(tmp_path / "eval.jsonl", EVAL), vocabulary, num_shots=2, seed=0,
            prompt_template="{sentence} and the", choices=(" cat", " dog"))
        gin.clear_config()
        try:
            assert main(["eval", f"--gin_file={gin_file}", f"--checkpoint={tmp_path / 'run'}",
                         f"--task={name}", "--split=validation"]) == 0
        finally:
            gin.clear_config()
            seqio.TaskRegistry.remove(name)
    capsys.readouterr()
    results_dir = tmp_path / "run" / "eval_results"
    summary = json.loads(next(results_dir.glob("validation_step*.json")).read_text())
    results = summary["results"][name]
    records = [json.loads(line)
               for line in next(results_dir.glob(f"validation_step*_{name}.jsonl")).open()]
    assert len(records) == 2 * len(EVAL)  # one scored row per (example, choice)
    targets = [r["target"] for r in records]
    scores = [r["score"] for r in records]
    assert all(np.isfinite(s[0]) and s[0] < 0 for s in scores)
    labels = [row["label"] for row in EVAL]
    for key, normalise in (("mc_accuracy", False), ("mc_accuracy_norm", True)):
        chosen = chosen_answers(targets, scores, normalise=normalise)
        assert results[key] == pytest.approx(100 * np.mean(
            [chosen[i] == label for i, label in enumerate(labels)]))
