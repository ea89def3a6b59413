"""Few-/zero-shot multiple choice: k-shot prompts from the train file with a fixed seed,
one scored row per choice, and accuracies that follow the per-choice log-likelihoods."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx

from llmos_jax.data.few_shot import MultipleChoiceTemplate, few_shot_prompts, \
    register_multiple_choice_task
from llmos_jax.errors import UserError
from llmos_jax.evaluation.evaluator import evaluate_task
from llmos_jax.evaluation.predictors import target_scorer
from llmos_jax.metrics.multiple_choice import chosen_answers
from llmos_jax.models import DecoderLM, llama_style_config

TEMPLATE = dict(prompt_template="{sentence}\nQuestion: Is this sentence positive or negative?"
                                "\nAnswer:", choices=(" negative", " positive"))
TRAIN = [{"sentence": s, "label": y} for s, y in [
    ("a gorgeous film", 1), ("dull and slow", 0), ("i loved it", 1), ("a mess", 0),
    ("warm and funny", 1), ("boring", 0)]]
EVAL = [{"sentence": s, "label": y} for s, y in [
    ("great acting", 1), ("terrible plot", 0), ("fine", 1)]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_prompts_draw_shots_from_train_with_a_fixed_seed():
    template = MultipleChoiceTemplate(**TEMPLATE)
    zero = few_shot_prompts(TRAIN, EVAL, template, num_shots=0, seed=1)
    assert zero[0] == "great acting\nQuestion: Is this sentence positive or negative?\nAnswer:"
    two = few_shot_prompts(TRAIN, EVAL, template, num_shots=2, seed=1)
    assert two == few_shot_prompts(TRAIN, EVAL, template, num_shots=2, seed=1)
    assert two != few_shot_prompts(TRAIN, EVAL, template, num_shots=2, seed=2)
    shots = two[0].split("\n\n")
    assert len(shots) == 3 and shots[-1] == zero[0]
    for shot in shots[:2]:
        sentence, answer = shot.split("\n")[0], shot.rsplit("Answer:", 1)[1]
        row = next(r for r in TRAIN if r["sentence"] == sentence)
        assert answer == TEMPLATE["choices"][row["label"]]
    with pytest.raises(UserError, match="num_shots=7 exceeds the 6 train rows"):
        few_shot_prompts(TRAIN, EVAL, template, num_shots=7, seed=1)


@pytest.mark.parametrize("num_shots", [0, 2])
def test_scores_are_each_choices_log_likelihood_and_accuracy_follows(tmp_path, num_shots):
    vocabulary = seqio.ByteVocabulary()
    name = register_multiple_choice_task(
        f"sst2_like_{num_shots}shot", write_jsonl(tmp_path / "train.jsonl", TRAIN),
        write_jsonl(tmp_path / "eval.jsonl", EVAL), vocabulary, num_shots=num_shots, seed=3,
        **TEMPLATE)
    config = llama_style_config(vocab_size=vocabulary.vocab_size, num_layers=1, embed_dim=32,
                                num_heads=4, num_kv_heads=2, mlp_dim=48, max_len=256,
                                scan_layers=False)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    try:
        task = seqio.get_mixture_or_task(name)
        metrics, outputs = evaluate_task(task, "validation", score_fn=target_scorer(model, None),
                                         batch_size=4)
    finally:
        seqio.TaskRegistry.remove(name)
    assert len(outputs.scores) == 2 * len(EVAL)
    prompts = few_shot_prompts(TRAIN, EVAL, MultipleChoiceTemplate(**TEMPLATE),
                               num_shots=num_shots, seed=3)
    # The reference: one causal forward pass over every prompt + choice, right-padded.
    rows = [(vocabulary.encode(prompts[t["example"]]),
             vocabulary.encode(TEMPLATE["choices"][t["choice"]])) for t in outputs.targets]
    width = max(len(p) + len(c) for p, c in rows)
    batch = np.zeros((len(rows), width), np.int32)
    for i, (prompt, choice) in enumerate(rows):
        batch[i, :len(prompt) + len(choice)] = prompt + choice
    log_probs = np.asarray(jax.nn.log_softmax(model(jnp.asarray(batch)), axis=-1))
    for i, ((prompt, choice), score) in enumerate(zip(rows, outputs.scores)):
        positions = np.arange(len(prompt) - 1, len(prompt) + len(choice) - 1)
        expected = float(np.sum(log_probs[i, positions, choice]))
        assert score[0] == pytest.approx(expected, abs=1e-4)
    labels = [row["label"] for row in EVAL]
    for key, normalise in (("mc_accuracy", False), ("mc_accuracy_norm", True)):
        chosen = chosen_answers(outputs.targets, outputs.scores, normalise=normalise)
        assert metrics[key] == pytest.approx(
            100 * np.mean([chosen[i] == label for i, label in enumerate(labels)]))


def test_length_normalisation_divides_by_the_choices_utf8_bytes():
    """Worked by hand: per byte, the long choice wins where the total favours the short one."""
    from llmos_jax.metrics.multiple_choice import multiple_choice_accuracy

    # Example 0: " no" (3 bytes) -2.0 vs " absolutely" (11 bytes) -4.4: totals pick " no",
    # per byte -0.667 vs -0.4 pick " absolutely" (the label). "好" is 3 UTF-8 bytes.
    targets = [dict(example=0, choice=0, label=1, text=" no"),
               dict(example=0, choice=1, label=1, text=" absolutely"),
               dict(example=1, choice=0, label=0, text="好"),
               dict(example=1, choice=1, label=0, text="ok")]
    scores = [(-2.0, 1), (-4.4, 3), (-1.5, 1), (-1.2, 1)]  # 1: -0.5/byte vs -0.6/byte
    assert chosen_answers(targets, scores, normalise=False) == {0: 0, 1: 1}
    assert chosen_answers(targets, scores, normalise=True) == {0: 1, 1: 0}
    assert multiple_choice_accuracy(targets, scores) == {"mc_accuracy": 0.0,
                                                         "mc_accuracy_norm": 100.0}
