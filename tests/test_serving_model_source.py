"""`load_served_model`: exports load with no gin file and decode as the run did; Hugging Face
folders load with their tokenizer; tensor_parallel=N splits a model over N devices.

The decoder is trained for 3 steps on a character-vocabulary task, so its export is written by
the trainer's own hook; the T5 (a character-vocabulary encoder, byte outputs) is exported
through the same hook; the GPT-2 folder is written with transformers and tokenizers.
"""

import json
import shutil
import threading
import types

import gin
import jax
import pytest
import seqio
from flax import nnx
from inference_helpers import random_model
from serving_api_helpers import hf_gpt2_folder
from tiny_runs import character_task, tiny_run_bindings, train_in_process

from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.data.vocabulary_files import TaskVocabularies
from llmos_jax.errors import UserError
from llmos_jax.inference import DecodeConfig, DecodingEngine
from llmos_jax.models import EncoderDecoderConfig, EncoderDecoderLM
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.model_source import load_served_model
from llmos_jax.serving.requests import FinishEvent, GenerationRequest, SamplingSettings, TokenEvent
from llmos_jax.training.hooks import StepContext, Throughput
from llmos_jax.training.run_metadata import describe_run
from llmos_jax.training.standard_hooks import ExportParams

PROMPTS = ["the cat", "a red dog ran"]
NEW_TOKENS = 8

GPT_GIN = tiny_run_bindings(3, "TransformerConfig.vocab_size = 32",
                            "make_optimizer.learning_rate = 1e-2")


def greedy(model, prompts, eos_id):
    """`DecodingEngine.generate`'s greedy tokens for each prompt."""
    results = DecodingEngine(model).generate(
        prompts, DecodeConfig(max_new_tokens=NEW_TOKENS, eos_id=eos_id))
    return [list(result.tokens) for result in results]


def served_tokens(served, prompt_ids):
    """The tokens the serving engine streams for one greedy request."""
    engine = ServingEngine(served.model, max_slots=2, max_queue=0, prefill_chunk=8,
                           eos_id=served.eos_id, decoder_start_id=served.decoder_start_id)
    done, tokens = threading.Event(), []

    def sink(event):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
        elif isinstance(event, FinishEvent):
            done.set()

    engine.start()
    try:
        engine.submit(GenerationRequest("r", list(prompt_ids), SamplingSettings(
            max_tokens=NEW_TOKENS, temperature=0.0)), sink)
        assert done.wait(120)
    finally:
        engine.shutdown()
    return tokens


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 3-step run on a character-vocabulary task: model_dir with export/ and config.gin."""
    root = tmp_path_factory.mktemp("served_gpt")
    with character_task("served_chars") as (name, _):
        result = train_in_process(root / "run", [*GPT_GIN, f"train.task_name = {name!r}"])
        assert result.last_step == 3
        yield root / "run", name


def test_a_trained_run_serves_from_its_export_with_no_gin(trained_run):
    from llmos_jax.cli.run_loading import load_for_inference

    run, task_name = trained_run
    export = run / "export"
    assert (export / "vocabulary" / "outputs.chars.json").is_file()
    card = (export / "MODEL_CARD.md").read_text()
    assert task_name in card and "| steps | 3 |" in card and "eval/loss" in card
    assert "llmos serve --model=" in card

    gin.clear_config()
    served = load_served_model(run)  # The model_dir: its export/.
    assert gin.config_str() == "", "nothing was parsed"
    assert (served.name, served.source, served.family) == ("run", str(export), "decoder")
    assert served.max_context == 32 and served.eos_id == 1 and not served.encoder_decoder
    assert served.chat_template is None

    try:
        original = load_for_inference([str(run / "config.gin")], checkpoint=str(run))
    finally:
        gin.clear_config()
    vocabulary = original.vocabularies.inputs
    prompts = [served.encode_prompt(p) for p in PROMPTS]
    assert prompts == [list(vocabulary.encode(p)) for p in PROMPTS]
    expected = greedy(original.model, prompts, vocabulary.eos_id)
    assert greedy(served.model, prompts, served.eos_id) == expected
    assert served.tokenizer.decode(expected[0]) == vocabulary.decode(expected[0])


def test_tensor_parallel_splits_the_model_over_two_devices_and_serves_the_same_tokens(
        trained_run):
    run, _ = trained_run
    single = load_served_model(run / "export")
    split = load_served_model(run / "export", tensor_parallel=2, name="split")
    params = dict(nnx.to_flat_state(nnx.state(split.model, nnx.Param)))
    query = params[("layers", "attn", "query", "kernel")].get_value()
    embedding = params[("token_embed", "embedding")].get_value()
    for array, split_axis in ((query, 2), (embedding, 0)):  # heads; vocabulary
        assert len(array.sharding.device_set) == 2
        assert array.sharding.spec[split_axis] == "tensor"
        assert array.sharding.mesh.shape == {"data": 1, "fsdp": 1, "tensor": 2}
        assert {s.data.shape[split_axis] for s in array.addressable_shards} == {
            array.shape[split_axis] // 2}
    prompts = [single.encode_prompt(p) for p in PROMPTS]
    expected = greedy(single.model, prompts, single.eos_id)
    assert greedy(split.model, prompts, split.eos_id) == expected
    assert served_tokens(split, prompts[0]) == expected[0]


def _export_t5(directory):
    """A tiny T5 whose encoder reads characters (ending in EOS) and decoder writes bytes,
    exported through the trainer's hook."""
    config = EncoderDecoderConfig(
        vocab_size=259, num_layers=1, embed_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
        max_len=32, position_embedding="none", norm="rmsnorm", use_bias=False,
        relative_buckets=8, relative_max_distance=20)
    model = random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs), seed=1, std=0.3)
    inputs, outputs = CharacterVocabulary("abcdefgh "), seqio.ByteVocabulary()
    meta = {**describe_run(config, outputs, task_name="t5_copy", seed=0, global_batch_size=1,
                           sequence_length=32, pack=False), "objective": {"name": "Seq2Seq"}}
    hook = ExportParams(directory, meta, vocabularies=TaskVocabularies(inputs, outputs, True))
    state = types.SimpleNamespace(params=nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    hook.on_end(StepContext(step=5, state=state, metrics=None, last=True, stopping=False,
                            throughput=Throughput(1.0), finished=True))
    return model


def test_an_encoder_decoder_export_encodes_with_its_inputs_vocabulary_and_eos(tmp_path):
    model = _export_t5(tmp_path / "export")
    served = load_served_model(tmp_path / "export", name="copier")
    assert served.encoder_decoder and served.append_eos_to_prompt and served.family == "t5"
    assert served.encode_prompt("bad") == [4, 3, 6, 1]  # characters, then EOS as trained
    prompts = [served.encode_prompt(p) for p in ("abc", "hide a bag")]
    assert greedy(served.model, prompts, 1) == greedy(model, prompts, 1)

    # An export from before meta.json named the family: found by its config's fields.
    old = tmp_path / "old_export"
    shutil.copytree(tmp_path / "export", old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["model_family"]
    (old / "meta.json").write_text(json.dumps(meta))
    (old / "SHA256SUMS.json").unlink()  # nor had checksums
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    again = load_served_model(old, chat_template_file=template)
    assert again.family == "t5" and again.render_chat([{"role": "user", "content": "ab"}]) == "ab "
    template.write_text("{% if %}")
    with pytest.raises(UserError, match=r"chat template .*chat.jinja does not compile"):
        load_served_model(old, chat_template_file=template)

    # A damaged export (one byte of its parameters changed) is refused, naming the file.
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "export", damaged)
    data = max((p for p in (damaged / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"--model=.*the export is damaged: .*params"):
        load_served_model(damaged)


def test_a_hugging_face_gpt2_folder_serves_with_its_tokenizer_and_template(tmp_path):
    from llmos_jax.convert.hf_models import import_hf_model

    folder = tmp_path / "tiny_gpt2"
    eos = hf_gpt2_folder(folder)
    served = load_served_model(folder)
    assert (served.name, served.family, served.eos_id, served.max_context) == (
        "tiny_gpt2", "decoder", eos, 64)
    text = "the cat sat on the mat"
    ids = served.encode_prompt(text)
    assert ids == [1, 2, 3, 4, 1, 5] and served.tokenizer.decode(ids) == text
    prompt = served.render_chat([{"role": "user", "content": "the dog"}])
    assert prompt == "<|endoftext|>the dog a"
    assert served.encode_prompt(prompt, add_special_tokens=False) == [eos, 1, 7, 6]
    prompts = [ids, served.encode_prompt("a red dog")]
    assert greedy(served.model, prompts, eos) == greedy(import_hf_model(folder), prompts, eos)


def test_what_cannot_be_served_is_named_with_the_fix(tmp_path, trained_run, repo_root):
    with pytest.raises(UserError, match=r"--model='.*nowhere'.*is not a directory"):
        load_served_model(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"is not an export \(no params/\).*Hugging Face folder"):
        load_served_model(tmp_path)
    run, _ = trained_run
    only_checkpoints = tmp_path / "run"
    shutil.copytree(run / "checkpoints", only_checkpoints / "checkpoints")
    with pytest.raises(UserError, match=r"holds checkpoints but no export/.*llmos train"):
        load_served_model(only_checkpoints)
    with pytest.raises(UserError, match=r"carries no vocabulary.*Re-export it"):
        load_served_model(repo_root / "tests" / "fixtures" / "compat" / "gpt" / "export")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match=r"tokenizer.json does not exist"):
        load_served_model(hf)
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match=r"bert model, an encoder that does not generate"):
        load_served_model(hf)
    devices = len(jax.local_devices())
    with pytest.raises(UserError, match=rf"--tensor-parallel={devices + 1} must be between 1"):
        load_served_model(run, tensor_parallel=devices + 1)
    with pytest.raises(UserError, match=r"max_context=33 must be between 2 and the model's "
                                        r"max_len \(32\)"):
        load_served_model(run, max_context=33)
    assert load_served_model(run, max_context=16).max_context == 16
