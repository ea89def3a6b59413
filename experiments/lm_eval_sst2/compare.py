"""SST-2 few-shot multiple choice, example by example: llmos_jax against lm-evaluation-harness.

    python experiments/lm_eval_sst2/compare.py prepare /tmp/sst2_cmp
    python experiments/lm_eval_sst2/compare.py ours /tmp/sst2_cmp --shots 0
    lm_eval --model hf --model_args pretrained=/tmp/sst2_cmp/hf_model,dtype=float32 \\
        --tasks sst2_llmos_0shot --include_path /tmp/sst2_cmp/tasks --num_fewshot 0 \\
        --batch_size 16 --device cpu --log_samples --output_path /tmp/sst2_cmp/lm_eval_0shot
    python experiments/lm_eval_sst2/compare.py compare /tmp/sst2_cmp --shots 0

(the same with ``--shots 4`` and ``sst2_llmos_4shot``; ``HF_DATASETS_OFFLINE=1``
``HF_HUB_OFFLINE=1``: nothing is downloaded).

`prepare` converts ``$LLMOS_DATA_DIR/sst2/{train,dev}.tsv`` to JSON lines,
trains a byte-level BPE tokenizer and a small Llama-style ``DecoderLM`` on
zero- and 4-shot SST-2 train prompts, with the loss on the answer (800 optax
steps, so its answers are better than chance), and exports both as a Hugging Face
``LlamaForCausalLM`` folder. It also writes, per shot count, the evaluation
file that lm-evaluation-harness reads: each row carries the exact prompt
llmos_jax builds (`llmos_jax.data.few_shot.few_shot_prompts`, same shots, same
seed), so both sides score identical strings; the harness task is zero-shot
over that ``prompt`` field, with ``target_delimiter: ""`` and the same two
choices. `ours` scores every (example, choice) with the exported model
re-imported through `llmos_jax.convert` and ``llmos eval``'s evaluator; `compare`
matches the two per (example, choice) and writes ``comparison_<k>shot.json``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import pathlib
import sys

PROMPT = "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:"
CHOICES = (" negative", " positive")
SEED = 1234


def _rows(tsv: pathlib.Path) -> list[dict]:
    with tsv.open(encoding="utf-8") as file:
        return [{"sentence": r["sentence"].strip(), "label": int(r["label"])}
                for r in csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)]


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")


def prepare(out: pathlib.Path, steps: int) -> None:
    import jax
    import numpy as np
    import optax
    from flax import nnx
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llmos_jax.convert.hf_models import export_hf_model
    from llmos_jax.data.few_shot import MultipleChoiceTemplate, few_shot_prompts
    from llmos_jax.data.hf_tokenizer_vocab import HfTokenizerVocabulary
    from llmos_jax.models import DecoderLM, llama_style_config

    source = pathlib.Path(os.environ["LLMOS_DATA_DIR"]) / "sst2"
    out.mkdir(parents=True, exist_ok=True)
    train, dev = _rows(source / "train.tsv"), _rows(source / "dev.tsv")
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "validation.jsonl", dev)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        [PROMPT.format(**row) + CHOICES[row["label"]] for row in train],
        trainers.BpeTrainer(vocab_size=2048, special_tokens=["<pad>", "<s>", "</s>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer_dir = out / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    tokenizer.save(str(tokenizer_dir / "tokenizer.json"))
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}))
    vocabulary = HfTokenizerVocabulary(tokenizer_dir)

    # Training rows: zero-shot prompts (every fifth step 4-shot, other train rows as
    # shots) and the answer; the loss is on the answer's tokens, so the model learns
    # to answer, not only the format.
    template = MultipleChoiceTemplate(PROMPT, CHOICES)
    rng = np.random.default_rng(0)
    batch = 32
    config = llama_style_config(vocab_size=vocabulary.vocab_size, num_layers=2, embed_dim=64,
                                num_heads=4, num_kv_heads=2, mlp_dim=192, max_len=512,
                                scan_layers=False)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(5e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens, weights):
        def loss_fn(model):
            logits = model(tokens[:, :-1])
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
            return (losses * weights[:, 1:]).sum() / weights[:, 1:].sum()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for number in range(steps):
        shots, length = (4, 256) if number % 5 == 4 else (0, 64)
        picked = [train[i] for i in rng.integers(0, len(train), size=batch * 5)]
        prompts = few_shot_prompts(picked[batch:], picked[:batch], template,
                                   num_shots=shots, seed=number)
        tokens = np.zeros((batch, length + 1), np.int32)
        weights = np.zeros((batch, length + 1), np.float32)
        for i, (prompt, row) in enumerate(zip(prompts, picked)):
            answer = vocabulary.encode(CHOICES[row["label"]])
            ids = (vocabulary.encode(prompt) + answer)[-(length + 1):]
            tokens[i, :len(ids)] = ids
            weights[i, len(ids) - len(answer):len(ids)] = 1.0
        loss = step(model, optimizer, jax.numpy.asarray(tokens), jax.numpy.asarray(weights))
        if number % 50 == 0 or number == steps - 1:
            print(f"step {number} answer loss {float(loss):.3f}", flush=True)

    export_hf_model(model, out / "hf_model", model_type="llama",
                    extra_config={"bos_token_id": vocabulary.tokenizer.token_to_id("<s>"),
                                  "eos_token_id": vocabulary.eos_id, "pad_token_id": 0})
    vocabulary.save_pretrained(out / "hf_model")

    tasks = out / "tasks"
    tasks.mkdir(exist_ok=True)
    for shots in (0, 4):
        prompts = few_shot_prompts(train, dev, template, num_shots=shots, seed=SEED)
        _write_jsonl(out / f"validation_prompts_{shots}shot.jsonl",
                     [{"prompt": p, "label": row["label"]} for p, row in zip(prompts, dev)])
        (tasks / f"sst2_llmos_{shots}shot.yaml").write_text(
            f"task: sst2_llmos_{shots}shot\n"
            "dataset_path: json\n"
            "dataset_kwargs:\n"
            f"  data_files:\n    validation: {out / f'validation_prompts_{shots}shot.jsonl'}\n"
            "validation_split: validation\n"
            "output_type: multiple_choice\n"
            "doc_to_text: \"{{prompt}}\"\n"
            f"doc_to_choice: {json.dumps(list(CHOICES))}\n"
            "doc_to_target: label\n"
            "target_delimiter: \"\"\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def ours(out: pathlib.Path, shots: int) -> None:
    import seqio

    from llmos_jax.convert.hf_models import import_hf_model
    from llmos_jax.data.few_shot import register_multiple_choice_task
    from llmos_jax.data.hf_tokenizer_vocab import HfTokenizerVocabulary
    from llmos_jax.evaluation.evaluator import evaluate_task
    from llmos_jax.evaluation.predictors import target_scorer

    model = import_hf_model(out / "hf_model", scan_layers=False)
    vocabulary = HfTokenizerVocabulary(out / "hf_model")
    name = register_multiple_choice_task(
        f"sst2_{shots}shot", str(out / "train.jsonl"), str(out / "validation.jsonl"),
        vocabulary, prompt_template=PROMPT, choices=CHOICES, num_shots=shots, seed=SEED)
    metrics, outputs = evaluate_task(seqio.get_mixture_or_task(name), "validation",
                                     score_fn=target_scorer(model, None), batch_size=32)
    rows = [{"example": t["example"], "choice": t["choice"], "label": t["label"],
             "log_likelihood": s[0]} for t, s in zip(outputs.targets, outputs.scores)]
    _write_jsonl(out / f"ours_{shots}shot.jsonl", rows)
    print(json.dumps(metrics))


def compare(out: pathlib.Path, shots: int) -> None:
    import numpy as np

    ours_rows = [json.loads(line) for line in
                 (out / f"ours_{shots}shot.jsonl").read_text().splitlines()]
    ours_ll = {(r["example"], r["choice"]): r["log_likelihood"] for r in ours_rows}
    labels = {r["example"]: r["label"] for r in ours_rows}
    [samples_file] = glob.glob(str(out / f"lm_eval_{shots}shot" / "**" /
                                   f"samples_sst2_llmos_{shots}shot_*.jsonl"), recursive=True)
    theirs_ll = {}
    for line in pathlib.Path(samples_file).read_text().splitlines():
        sample = json.loads(line)
        for choice, response in enumerate(sample["resps"]):
            theirs_ll[(sample["doc_id"], choice)] = float(response[0][0])
        assert int(sample["target"]) == labels[sample["doc_id"]]
    assert set(ours_ll) == set(theirs_ll), "different (example, choice) sets"
    diffs = np.array([abs(ours_ll[key] - theirs_ll[key]) for key in ours_ll])
    examples = sorted(labels)

    def chosen(table):
        return {e: int(np.argmax([table[(e, c)] for c in range(len(CHOICES))])) for e in examples}

    def chosen_norm(table):  # per UTF-8 byte of the choice, as acc_norm
        return {e: int(np.argmax([table[(e, c)] / len(CHOICES[c].encode())
                                  for c in range(len(CHOICES))])) for e in examples}

    result = {"shots": shots, "examples": len(examples), "rows": len(ours_ll),
              "max_abs_log_likelihood_diff": float(diffs.max()),
              "mean_abs_log_likelihood_diff": float(diffs.mean()),
              "rows_within_1e-3": int((diffs <= 1e-3).sum())}
    for name, pick in (("acc", chosen), ("acc_norm", chosen_norm)):
        mine, theirs = pick(ours_ll), pick(theirs_ll)
        result[f"{name}_ours"] = float(np.mean([mine[e] == labels[e] for e in examples]))
        result[f"{name}_lm_eval"] = float(np.mean([theirs[e] == labels[e] for e in examples]))
        result[f"{name}_same_choice"] = sum(mine[e] == theirs[e] for e in examples)
        result[f"{name}_ours_chose_positive"] = sum(mine[e] == 1 for e in examples)
    margins = np.array([abs(ours_ll[(e, 1)] - ours_ll[(e, 0)]) for e in examples])
    result["smallest_choice_margin_ours"] = float(margins.min())
    [results_file] = [f for f in glob.glob(str(out / f"lm_eval_{shots}shot" / "**" /
                                                "results_*.json"), recursive=True)]
    reported = json.loads(pathlib.Path(results_file).read_text())["results"]
    result["lm_eval_reported"] = reported[f"sst2_llmos_{shots}shot"]
    (out / f"comparison_{shots}shot.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "ours", "compare"])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.out, args.steps)
    elif args.command == "ours":
        ours(args.out, args.shots)
    else:
        compare(args.out, args.shots)


if __name__ == "__main__":
    main(sys.argv[1:])
