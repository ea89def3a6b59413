"""`llmos infer` end to end: a tiny GPT trained for 3 steps and a tiny T5, decoded from disk.

The decoder run is trained with `train` from gin, so `--checkpoint` reads a
real `checkpoints/<step>` folder and its `config.gin`; the T5 weights are an
initialisation exported with `export_params`. Each test runs the command in
process (`main([...])`) and checks the JSONL it wrote against `generate`
called directly on the same weights.
"""

import json
import uuid

import gin
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
import seqio
import tensorflow as tf

from llmos_jax.cli.main import main
from llmos_jax.inference import DecodeConfig, generate
from llmos_jax.cli.run_loading import load_for_inference
from llmos_jax.compression.int8 import Int8Dense, Int8Embedding
from llmos_jax.errors import UserError

GPT_GIN = """
TransformerConfig.vocab_size = 259
TransformerConfig.num_layers = 1
TransformerConfig.embed_dim = 16
TransformerConfig.num_heads = 2
TransformerConfig.max_len = 32
TransformerConfig.position_embedding = 'learned'
TransformerConfig.dropout_rate = 0.0
train.model_config = @TransformerConfig()
register_text_file_task.name = 'infer_test_text'
train.task_name = @register_text_file_task()
train.sequence_length = 32
train.global_batch_size = 8
train.num_steps = 3
train.eval_every = 0
train.checkpoint_every = 3
train.async_checkpointing = False
train.sample_prompts = []
train.progress_bar = False
make_optimizer.learning_rate = 1e-2
"""

T5_GIN = """
EncoderDecoderConfig.vocab_size = 259
EncoderDecoderConfig.num_layers = 1
EncoderDecoderConfig.embed_dim = 16
EncoderDecoderConfig.num_heads = 2
EncoderDecoderConfig.head_dim = 8
EncoderDecoderConfig.mlp_dim = 32
EncoderDecoderConfig.max_len = 32
EncoderDecoderConfig.position_embedding = 'none'
EncoderDecoderConfig.norm = 'rmsnorm'
EncoderDecoderConfig.use_bias = False
EncoderDecoderConfig.relative_buckets = 8
EncoderDecoderConfig.relative_max_distance = 20
train.model_config = @EncoderDecoderConfig()
train.objective = @Seq2Seq()
train.sequence_length = {'inputs': 32, 'targets': 16}
"""

PROMPTS = ["The cat", "A", "the red barn while birds", "x" * 40]


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training.trainer import train

    root = tmp_path_factory.mktemp("gpt")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join("the cat sat on the mat and the dog ran to the red barn"
                                  for _ in range(40)))
    gin_file = root / "gpt.gin"
    gin_file.write_text(GPT_GIN)
    gin.clear_config()
    try:
        parse_gin([str(gin_file)], [f"register_text_file_task.path = {str(corpus)!r}"])
        result = train(model_dir=str(root / "run"))
    finally:
        gin.clear_config()
    assert result.last_step == 3
    return root / "run"


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in rows))
    return path


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def infer(*flags):
    code = main(["infer", *flags])
    gin.clear_config()
    return code


def test_jsonl_in_and_out_equals_generate(gpt_run, tmp_path):
    rows = [{"prompt": p, "id": f"p{i}"} for i, p in enumerate(PROMPTS)]
    rows.insert(2, "{broken")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    output = tmp_path / "out.jsonl"
    assert infer(f"--gin_file={gpt_run / 'config.gin'}", f"--checkpoint={gpt_run}",
                 f"--input={prompts}", f"--output={output}", "--chunk_size=2",
                 "--gin.DecodeConfig.max_new_tokens=5") == 0
    records = read(output)
    assert [r["id"] for r in records] == ["p0", "p1", 3, "p2", "p3"]
    assert "line 3: not valid JSON" in records[2]["error"]
    assert "40 tokens but the cache holds 32 positions" in records[4]["error"]

    loaded = load_for_inference([str(gpt_run / "config.gin")], checkpoint=str(gpt_run))
    assert loaded.location.step == 3
    vocabulary = loaded.vocabularies.outputs
    # Batched as the command batched them (2, then 1), so no padding differs.
    direct = generate(loaded.model, loaded.params, PROMPTS[:3],
                      DecodeConfig(max_new_tokens=5, eos_id=vocabulary.eos_id),
                      vocabulary=vocabulary, max_batch_size=2)
    good = [r for r in records if "completions" in r]
    for record, result in zip(good, direct):
        (completion,) = record["completions"]
        assert completion["tokens"] == list(result.tokens) and len(result.tokens) == 5
        assert completion["text"] == result.text
        assert completion["score"] == pytest.approx(result.score, abs=1e-5)
        assert completion["finish_reason"] == "length"


def test_sampling_settings_from_gin_flags_and_an_export(gpt_run, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": "The cat", "seed": 3}, {"prompt": "The cat", "seed": 3},
                           {"prompt": "The cat", "seed": 4}])
    outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for output in outputs:
        assert infer(f"--gin_file={gpt_run / 'config.gin'}", f"--checkpoint={gpt_run / 'export'}",
                     f"--input={prompts}", f"--output={output}",
                     "--gin.DecodeConfig.method='sample'", "--gin.DecodeConfig.top_k=40",
                     "--gin.DecodeConfig.temperature=2.0",
                     "--gin.DecodeConfig.max_new_tokens=12") == 0
    first, again = read(outputs[0]), read(outputs[1])
    assert first == again  # reproducible
    tokens = [r["completions"][0]["tokens"] for r in first]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]  # the seed decides
    assert all(len(t) == 12 for t in tokens)


def test_vocabulary_mismatch_fails_before_decoding(gpt_run, tmp_path, capsys):
    name = f"infer_other_vocab_{uuid.uuid4().hex[:6]}"
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors(
                {"targets": tf.constant([5, 6], tf.int32)}), ["validation"]),
        preprocessors=[], output_features={
            "targets": seqio.Feature(seqio.PassThroughVocabulary(259), add_eos=False)})
    try:
        prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "The"}])
        output = tmp_path / "out.jsonl"
        assert infer(f"--gin_file={gpt_run / 'config.gin'}", f"--checkpoint={gpt_run}",
                     f"--input={prompts}", f"--output={output}",
                     f"--gin.train.task_name='{name}'") == 2
    finally:
        seqio.TaskRegistry.remove(name)
    error = capsys.readouterr().err
    assert "was trained with vocabulary {'class': 'ByteVocabulary'" in error
    assert f"task '{name}' (train.task_name) uses {{'class': 'PassThroughVocabulary'" in error
    assert not output.exists() and not (tmp_path / "out.jsonl.parts").exists()


def test_flag_mistakes_are_one_line_errors(gpt_run, tmp_path, capsys):
    assert infer(f"--gin_file={gpt_run / 'config.gin'}", f"--checkpoint={gpt_run}",
                 f"--output={tmp_path / 'o.jsonl'}") == 2
    assert "exactly one of --input" in capsys.readouterr().err
    assert infer(f"--gin_file={gpt_run / 'config.gin'}", f"--checkpoint={tmp_path}",
                 f"--input={tmp_path / 'p.jsonl'}", f"--output={tmp_path / 'o.jsonl'}") == 2
    assert "is not a file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def t5_export(tmp_path_factory):
    """A text-to-text task over bytes and a tiny T5's initial weights exported for it."""
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.data.registry import register_text_to_text_task
    from llmos_jax.cli.run_loading import train_settings
    from llmos_jax.checkpoints.checkpointer import export_params
    from llmos_jax.training.run_metadata import describe_vocabulary
    from llmos_jax.objectives.model_building import model_spec

    root = tmp_path_factory.mktemp("t5")
    name = f"infer_t5_{uuid.uuid4().hex[:6]}"
    pairs = [("copy this", "copy this"), ("hello there", "there"), ("abc", "cba")]

    def dataset(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({"inputs": [a for a, _ in pairs],
                                                   "targets": [b for _, b in pairs]})

    vocabulary = seqio.ByteVocabulary()
    register_text_to_text_task(name, seqio.FunctionDataSource(dataset, ["validation"]), vocabulary)
    gin_file = root / "t5.gin"
    gin_file.write_text(T5_GIN + f"train.task_name = {name!r}\n")
    gin.clear_config()
    try:
        parse_gin([str(gin_file)], [])
        settings = train_settings()
        spec = model_spec(lambda rngs: settings["objective"].build_model(
            settings["model_config"], rngs=rngs, shard=None), seed=1)
        export_params(root / "export", spec.init_params(),
                      {"step": 0, "vocabulary": describe_vocabulary(vocabulary)})
    finally:
        gin.clear_config()
    yield gin_file, root / "export", name, pairs
    seqio.TaskRegistry.remove(name)


def test_seq2seq_jsonl_and_task_inputs(t5_export, tmp_path):
    gin_file, export, task_name, pairs = t5_export
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"inputs": a} for a, _ in pairs])
    from_jsonl, from_task = tmp_path / "jsonl.jsonl", tmp_path / "task.jsonl"
    common = (f"--gin_file={gin_file}", f"--checkpoint={export}",
              "--gin.DecodeConfig.max_new_tokens=4", "--chunk_size=2")
    assert infer(*common, f"--input={prompts}", f"--output={from_jsonl}") == 0
    assert infer(*common, f"--task={task_name}", "--split=validation", "--max_examples=2",
                 f"--output={from_task}") == 0
    jsonl_records, task_records = read(from_jsonl), read(from_task)
    assert [r["prompt"] for r in task_records] == ["copy this", "hello there"]
    assert [r["targets"] for r in task_records] == ["copy this", "there"]
    assert [r["id"] for r in task_records] == [0, 1]

    loaded = load_for_inference([str(gin_file)], checkpoint=str(export))
    assert loaded.encoder_decoder and loaded.vocabularies.inputs_add_eos
    vocabulary = loaded.vocabularies.outputs
    encoded = [list(vocabulary.encode(a)) + [vocabulary.eos_id] for a, _ in pairs]  # as trained
    direct = generate(loaded.model, loaded.params, encoded,
                      DecodeConfig(max_new_tokens=4, eos_id=vocabulary.eos_id),
                      vocabulary=vocabulary, max_batch_size=2)
    for records in (jsonl_records, task_records):
        for record, result in zip(records, direct):
            assert record["completions"][0]["tokens"] == list(result.tokens)
            assert record["completions"][0]["text"] == result.text


INT8_PROMPTS = ["The cat", "the red barn"]


# `--quantize=int8`: the same int8 weights as `llmos serve --quantize=int8`.


def test_infer_decodes_the_int8_weights(gpt_run, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in INT8_PROMPTS])
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
    direct = generate(loaded.model, loaded.params, INT8_PROMPTS,
                      DecodeConfig(max_new_tokens=6, eos_id=vocabulary.eos_id),
                      vocabulary=vocabulary)
    records = read(output)
    assert [r["completions"][0]["tokens"] for r in records] == [list(d.tokens) for d in direct]
    with pytest.raises(UserError, match="--quantize='int4' is not supported"):
        load_for_inference([str(gpt_run / "config.gin")], checkpoint=str(gpt_run),
                           quantize="int4")


def test_eval_scores_the_int8_weights_beside_the_float_results(gpt_run, capsys):
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
    return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
