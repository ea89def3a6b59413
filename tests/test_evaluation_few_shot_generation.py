"""Few-shot generation tasks: k-shot prompts with answers, generated continuations cut at
the stop strings, scored by exact match and token F1 against every acceptable answer."""

import json

import numpy as np
import pytest
import seqio
from flax import nnx

from llmos_jax.data.few_shot import (GenerationTemplate, cut_at_stop, few_shot_prompts,
                                     register_generation_task)
from llmos_jax.errors import UserError
from llmos_jax.evaluation.evaluator import evaluate_task
from llmos_jax.evaluation.predictors import generator
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_engine import DecodingEngine
from llmos_jax.metrics.answer_match import answer_f1, exact_match, normalise_answer
from llmos_jax.models import DecoderLM, llama_style_config

TRAIN = [{"question": "capital of France?", "answer": "Paris"},
         {"question": "two plus two?", "answer": ["4", "four"]},
         {"question": "colour of the sky?", "answer": "blue"}]
EVAL = [{"question": "capital of Italy?", "answer": ["Rome", "Roma"]},
        {"question": "three plus one?", "answer": "4"}]
PROMPT = "Q: {question}\nA:"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_exact_match_and_f1_take_the_best_normalised_answer():
    assert normalise_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    targets = [["Rome", "Roma"], "the blue sky", "4"]
    predictions = ["roma.", "Blue sky today", "five"]
    assert exact_match(targets, predictions) == {"exact_match": pytest.approx(100 / 3)}
    # "blue sky today" vs "blue sky": precision 2/3, recall 1 -> F1 0.8.
    assert answer_f1(targets, predictions) == {"answer_f1": pytest.approx(100 * 1.8 / 3)}
    with pytest.raises(UserError, match="2 targets but 1 predictions"):
        exact_match(["a", "b"], ["a"])


def test_shots_show_the_first_answer_and_stops_cut_the_generation():
    template = GenerationTemplate(PROMPT)
    prompts = few_shot_prompts(TRAIN, EVAL, template, num_shots=3, seed=0)
    shots = prompts[1].split("\n\n")
    assert shots[-1] == "Q: three plus one?\nA:"
    assert sorted(shots[:-1]) == sorted(["Q: capital of France?\nA: Paris",
                                         "Q: two plus two?\nA: 4", "Q: colour of the sky?\nA: blue"])
    assert cut_at_stop(" Rome\nQ: next", ["\n"]) == "Rome"
    assert cut_at_stop(" Rome. Q:", ["\n", "Q:"]) == "Rome."
    with pytest.raises(UserError, match="answer=7 is neither a string"):
        template.answers({"question": "x", "answer": 7}, "evaluation row 0")


def test_generation_task_scores_the_models_continuations(tmp_path):
    vocabulary = seqio.ByteVocabulary()
    config = llama_style_config(vocab_size=vocabulary.vocab_size, num_layers=1, embed_dim=32,
                                num_heads=4, num_kv_heads=2, mlp_dim=48, max_len=256,
                                scan_layers=False)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    decode = DecodeConfig(max_new_tokens=12)
    prompts = few_shot_prompts(TRAIN, EVAL, GenerationTemplate(PROMPT), num_shots=1, seed=5)
    engine = DecodingEngine(model, nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                            vocabulary=vocabulary)
    raw = [r.text for r in engine.generate([vocabulary.encode(p) for p in prompts], decode)]
    assert all(len(text) >= 4 for text in raw), raw
    stop = raw[0][len(raw[0]) // 2]  # a character the model does generate: the cut must apply
    name = register_generation_task(
        "qa_1shot", write_jsonl(tmp_path / "train.jsonl", TRAIN),
        write_jsonl(tmp_path / "eval.jsonl", EVAL), vocabulary, prompt_template=PROMPT,
        stop_strings=[stop], num_shots=1, seed=5)
    try:
        metrics, outputs = evaluate_task(
            seqio.get_mixture_or_task(name), "validation",
            predict_fn=generator(model, None, vocabulary=vocabulary, decode_config=decode,
                                 engine=engine),
            batch_size=2)
    finally:
        seqio.TaskRegistry.remove(name)
    assert outputs.targets == [["Rome", "Roma"], ["4"]]
    assert outputs.predictions == [cut_at_stop(text, [stop]) for text in raw]
    assert len(outputs.predictions[0]) < len(raw[0].strip())
    assert metrics["exact_match"] == exact_match(outputs.targets,
                                                 outputs.predictions)["exact_match"]
    assert metrics["answer_f1"] == pytest.approx(np.mean(
        [answer_f1([t], [p])["answer_f1"] for t, p in zip(outputs.targets, outputs.predictions)]))
