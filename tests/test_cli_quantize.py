"""`llmos infer --quantize=int8` and `llmos eval --quantize=int8`: the same int8 weights as
`llmos serve --quantize=int8`, decoded and scored from disk, with the float results kept."""

import json

import jax.numpy as jnp
import pytest
from flax import nnx
from test_cli_infer import fresh_gin, gpt_run, infer, read, write_jsonl  # noqa: F401

from llmos_jax.cli.main import main
from llmos_jax.cli.run_loading import load_for_inference
from llmos_jax.compression.int8 import Int8Dense, Int8Embedding
from llmos_jax.errors import UserError
from llmos_jax.inference import DecodeConfig, generate

PROMPTS = ["The cat", "the red barn"]


def test_infer_decodes_the_int8_weights(gpt_run, tmp_path):  # noqa: F811
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    output = tmp_path / "out.jsonl"
    assert infer(f"--gin_file={gpt_run / 'config.gin'}", f"--checkpoint={gpt_run}",
                 f"--input={prompts}", f"--output={output}", "--quantize=int8",
                 "--gin.DecodeConfig.max_new_tokens=6") == 0
    loaded = load_for_inference([str(gpt_run / "config.gin")], checkpoint=str(gpt_run),
                                quantize="int8")
    kinds = {type(node) for _, node in nnx.iter_graph(loaded.model)}
    assert {Int8Dense, Int8Embedding} <= kinds
    kernels = [leaf for path, leaf in jax_leaves(loaded.params) if path.endswith("kernel")]
    assert kernels and all(k.dtype == jnp.int8 for k in kernels)
    vocabulary = loaded.vocabularies.outputs
    direct = generate(loaded.model, loaded.params, PROMPTS,
                      DecodeConfig(max_new_tokens=6, eos_id=vocabulary.eos_id),
                      vocabulary=vocabulary)
    records = read(output)
    assert [r["completions"][0]["tokens"] for r in records] == [list(d.tokens) for d in direct]
    with pytest.raises(UserError, match="--quantize='int4' is not supported"):
        load_for_inference([str(gpt_run / "config.gin")], checkpoint=str(gpt_run),
                           quantize="int4")


def test_eval_scores_the_int8_weights_beside_the_float_results(gpt_run, capsys):  # noqa: F811
    def run_eval(*flags):
        code = main(["eval", f"--gin_file={gpt_run / 'config.gin'}", f"--checkpoint={gpt_run}",
                     "--max_examples=8", "--gin.register_lm_task.metric_fns=[@perplexity]",
                     *flags])
        capsys.readouterr()
        return code

    assert run_eval() == 0
    assert run_eval("--quantize=int8") == 0
    float_file = gpt_run / "eval_results" / "validation_step3.json"
    int8_file = gpt_run / "eval_int8" / "eval_results" / "validation_step3.json"
    (task, float_metrics), = json.loads(float_file.read_text())["results"].items()
    int8_metrics = json.loads(int8_file.read_text())["results"][task]
    assert set(int8_metrics) == set(float_metrics)
    name = next(k for k in float_metrics if "loss" in k or "perplexity" in k)
    assert int8_metrics[name] == pytest.approx(float_metrics[name], rel=0.01)
    assert int8_metrics[name] != float_metrics[name]  # the int8 weights were used


def jax_leaves(params):
    import jax

    return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
