"""GPT-2 weights in and out: parity with transformers, exact round trips, bad-input errors."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("safetensors")
import safetensors.numpy as safetensors_numpy  # noqa: E402

from llmos_jax.convert import gpt2, hf_checkpoint  # noqa: E402
from llmos_jax.convert.hf_models import export_hf_model, import_hf_model  # noqa: E402
from llmos_jax.convert.tensor_mapping import flatten_params  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402
from llmos_jax.models import DecoderLM, TransformerConfig, axes, llama_style_config  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB, LAYERS, EMBED, HEADS, POSITIONS = 100, 2, 64, 4, 32
HF_SHAPE = dict(vocab_size=VOCAB, n_layer=LAYERS, n_embd=EMBED, n_head=HEADS, n_positions=POSITIONS)
TOLERANCE = 1e-4  # max abs difference, float32


def ours_gpt2_config(**overrides) -> TransformerConfig:
    fields = dict(vocab_size=VOCAB, num_layers=LAYERS, embed_dim=EMBED, num_heads=HEADS,
                  max_len=POSITIONS)
    fields.update(overrides)
    return TransformerConfig(**fields)


def random_model(config: TransformerConfig, seed: int = 0) -> DecoderLM:
    """A DecoderLM whose every weight (biases and norms included) is drawn on the host."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        base = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(base + rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def params_of(model: DecoderLM) -> dict:
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {path: np.asarray(leaf) for path, leaf in flatten_params(pure).items()}


def assert_same_params(left: DecoderLM, right: DecoderLM) -> None:
    left_params, right_params = params_of(left), params_of(right)
    assert left_params.keys() == right_params.keys()
    for path in left_params:
        assert left_params[path].dtype == right_params[path].dtype, path
        np.testing.assert_array_equal(left_params[path], right_params[path], err_msg=str(path))


def hidden_states(model: DecoderLM, tokens: np.ndarray) -> list[np.ndarray]:
    """Embeddings, each unstacked block's output, then the final-norm output (HF's list)."""
    config = model.config
    tokens = jnp.asarray(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = model.token_embed(tokens, jnp.float32) + model.pos_embed(positions, jnp.float32)
    states = [x]
    for block in model.layers:
        x = block(x, positions=positions, segment_ids=None, config=config,
                  shard=axes.no_sharding, dropout_key=None)
        states.append(x)
    states[-1] = model.final_norm(x)  # HF applies ln_f to the last entry
    return [np.asarray(state) for state in states]


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def random_hf_model(torch, transformers, **config_fields):
    """A GPT2LMHeadModel with every parameter (biases, LayerNorms) randomised, in eval mode."""
    config = transformers.GPT2Config(**HF_SHAPE, bos_token_id=None, eos_token_id=None,
                                     **config_fields)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            base = 1.0 if re.search(r"ln_.*weight", name) else 0.0
            parameter.copy_(base + 0.1 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(1).integers(0, VOCAB, size=(3, POSITIONS))


@pytest.fixture(scope="module")
def hf_dir(torch, transformers, tmp_path_factory):
    """A saved random GPT-2 and its outputs on `tokens` (computed once)."""
    model = random_hf_model(torch, transformers)
    directory = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def hf_outputs(hf_dir, tokens, torch):
    _, model = hf_dir
    with torch.no_grad():
        output = model(torch.tensor(tokens), output_hidden_states=True)
    return output.logits.numpy(), [state.numpy() for state in output.hidden_states]


def test_import_matches_transformers_logits_and_every_hidden_state(hf_dir, hf_outputs, tokens):
    directory, _ = hf_dir
    hf_logits, hf_hidden = hf_outputs
    model = gpt2.import_gpt2(directory, scan_layers=False)

    ours_hidden = hidden_states(model, tokens)
    assert len(ours_hidden) == len(hf_hidden) == LAYERS + 1
    for layer, (ours, theirs) in enumerate(zip(ours_hidden, hf_hidden)):
        assert max_abs(ours, theirs) < TOLERANCE, f"hidden state {layer}"
    assert max_abs(model(jnp.asarray(tokens)), hf_logits) < TOLERANCE


def test_import_with_stacked_layers_matches_transformers_and_unstacked_import(hf_dir, hf_outputs,
                                                                               tokens):
    directory, _ = hf_dir
    stacked = gpt2.import_gpt2(directory, scan_layers=True)
    unstacked = gpt2.import_gpt2(directory, scan_layers=False)

    assert max_abs(stacked(jnp.asarray(tokens)), hf_outputs[0]) < TOLERANCE
    stacked_params, unstacked_params = params_of(stacked), params_of(unstacked)
    for path, array in stacked_params.items():
        if path[0] == "layers":
            per_layer = [unstacked_params[("layers", i) + path[1:]] for i in range(LAYERS)]
            np.testing.assert_array_equal(array, np.stack(per_layer), err_msg=str(path))
        else:
            np.testing.assert_array_equal(array, unstacked_params[path], err_msg=str(path))


def test_import_reads_the_config(hf_dir):
    directory, _ = hf_dir
    model = import_hf_model(directory)

    assert model.config == TransformerConfig(
        vocab_size=VOCAB, num_layers=LAYERS, embed_dim=EMBED, num_heads=HEADS, head_dim=16,
        mlp_dim=4 * EMBED, max_len=POSITIONS, position_embedding="learned", norm="layernorm",
        norm_eps=1e-5, mlp_activation="gelu", use_bias=True, tie_embeddings=True,
        dropout_rate=0.1, init_std=0.02, scan_layers=True)


def test_export_reloads_in_transformers_with_identical_weights_and_logits(hf_dir, hf_outputs,
                                                                         tokens, tmp_path, torch,
                                                                         transformers):
    directory, original = hf_dir
    for scan_layers in (True, False):
        export_dir = tmp_path / f"scan_{scan_layers}"
        gpt2.export_gpt2(gpt2.import_gpt2(directory, scan_layers=scan_layers), export_dir)
        reloaded = transformers.GPT2LMHeadModel.from_pretrained(export_dir).eval()

        original_state, reloaded_state = original.state_dict(), reloaded.state_dict()
        assert original_state.keys() == reloaded_state.keys()
        for name, tensor in original_state.items():
            assert torch.equal(tensor, reloaded_state[name]), name
        with torch.no_grad():
            logits = reloaded(torch.tensor(tokens)).logits.numpy()
        np.testing.assert_array_equal(logits, hf_outputs[0])


def test_hf_to_ours_to_hf_gives_back_the_same_tensors(hf_dir, tmp_path):
    directory, _ = hf_dir
    gpt2.export_gpt2(gpt2.import_gpt2(directory), tmp_path)

    original = safetensors_numpy.load_file(str(directory / "model.safetensors"))
    exported = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
    assert original.keys() == exported.keys()
    for name, array in original.items():
        np.testing.assert_array_equal(exported[name], array, err_msg=name)


@pytest.mark.parametrize("overrides", [
    dict(scan_layers=True),
    dict(scan_layers=False),
    dict(scan_layers=True, tie_embeddings=False, mlp_dim=96, mlp_activation="gelu_exact"),
    dict(scan_layers=False, param_dtype="bfloat16"),
], ids=["stacked", "unstacked", "untied_head_n_inner_exact_gelu", "bfloat16"])
def test_ours_to_hf_to_ours_is_exact(overrides, tmp_path):
    model = random_model(ours_gpt2_config(**overrides))
    gpt2.export_gpt2(model, tmp_path)

    hf_config = json.loads((tmp_path / "config.json").read_text())
    reimported = gpt2.import_gpt2(tmp_path, scan_layers=overrides["scan_layers"],
                                  dropout_rate=0.0, param_dtype=model.config.param_dtype)
    assert reimported.config == model.config
    assert_same_params(model, reimported)
    assert hf_config["n_inner"] == (None if model.config.mlp_dim == 4 * EMBED else 96)


def test_untied_head_and_exact_gelu_match_transformers(torch, transformers, tokens, tmp_path):
    hf_model = random_hf_model(torch, transformers, tie_word_embeddings=False,
                               activation_function="gelu", n_inner=96)
    hf_model.save_pretrained(tmp_path)
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(tokens)).logits.numpy()

    model = gpt2.import_gpt2(tmp_path)
    assert (model.config.tie_embeddings, model.config.mlp_activation, model.config.mlp_dim) == (
        False, "gelu_exact", 96)
    assert max_abs(model(jnp.asarray(tokens)), hf_logits) < TOLERANCE


def test_bare_gpt2model_names_and_cached_mask_buffers_import(tmp_path):
    """The original OpenAI upload: no ``transformer.`` prefix, plus ``h.i.attn.bias`` masks."""
    model = random_model(ours_gpt2_config())
    gpt2.export_gpt2(model, tmp_path / "prefixed")
    tensors = safetensors_numpy.load_file(str(tmp_path / "prefixed" / "model.safetensors"))
    bare = {name.removeprefix("transformer."): array for name, array in tensors.items()}
    for layer in range(LAYERS):
        bare[f"h.{layer}.attn.bias"] = np.tril(np.ones((1, 1, POSITIONS, POSITIONS), np.float32))
        bare[f"h.{layer}.attn.masked_bias"] = np.array(-1e4, np.float32)
    config = json.loads((tmp_path / "prefixed" / "config.json").read_text())
    hf_checkpoint.write_checkpoint(tmp_path / "bare", config, bare)

    assert_same_params(model, gpt2.import_gpt2(tmp_path / "bare", dropout_rate=0.0))


@pytest.fixture
def exported_dir(tmp_path):
    gpt2.export_gpt2(random_model(ours_gpt2_config()), tmp_path)
    return tmp_path


def edit_tensors(directory, edit) -> None:
    tensors = dict(safetensors_numpy.load_file(str(directory / "model.safetensors")))
    edit(tensors)
    config = json.loads((directory / "config.json").read_text())
    hf_checkpoint.write_checkpoint(directory, config, tensors)


def test_missing_tensor_is_named_with_its_expected_shape(exported_dir):
    edit_tensors(exported_dir, lambda tensors: tensors.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(UserError, match=re.escape(
            "is missing tensor 'transformer.h.1.mlp.c_fc.weight' (shape (64, 256))")):
        gpt2.import_gpt2(exported_dir)


def test_unexpected_tensor_is_named(exported_dir):
    def add_third_layer(tensors):
        tensors["transformer.h.2.ln_1.weight"] = np.ones(EMBED, np.float32)

    edit_tensors(exported_dir, add_third_layer)
    with pytest.raises(UserError, match=re.escape(
            "has unexpected tensor 'transformer.h.2.ln_1.weight' (shape (64,))")):
        gpt2.import_gpt2(exported_dir)


def test_wrong_shape_names_the_tensor_with_expected_and_found_shapes(exported_dir):
    def halve_c_attn(tensors):
        tensors["transformer.h.0.attn.c_attn.weight"] = np.zeros((EMBED, 96), np.float32)

    edit_tensors(exported_dir, halve_c_attn)
    with pytest.raises(UserError, match=re.escape(
            "tensor 'transformer.h.0.attn.c_attn.weight' in ") + ".*" + re.escape(
            "has shape (64, 96), but the config (n_layer=2, n_embd=64, n_head=4, n_inner=256, "
            "n_positions=32, vocab_size=100, tie_word_embeddings=True) expects (64, 192)")):
        gpt2.import_gpt2(exported_dir)


def test_overriding_a_field_config_json_fixes_is_refused(exported_dir):
    with pytest.raises(UserError, match=re.escape(
            "cannot override TransformerConfig.max_len=16 when importing GPT-2: config.json "
            "fixes it to 32; drop the override.")):
        gpt2.import_gpt2(exported_dir, max_len=16)
    with pytest.raises(UserError, match="'scan_layer' is not a TransformerConfig field"):
        gpt2.import_gpt2(exported_dir, scan_layer=False)


def test_unsupported_model_type_names_the_supported_ones(exported_dir):
    config = json.loads((exported_dir / "config.json").read_text())
    (exported_dir / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    supported = "bert, gemma, gpt2, llama, mistral, qwen2, t5."
    with pytest.raises(UserError, match=re.escape(
            f"has model_type='falcon', which cannot be imported; supported model types: {supported}")):
        import_hf_model(exported_dir)
    with pytest.raises(UserError, match=re.escape("model_type='falcon' cannot be exported; "
                                                  f"supported model types: {supported}")):
        export_hf_model(random_model(ours_gpt2_config()), exported_dir, model_type="falcon")


def test_directory_without_safetensors_points_to_save_pretrained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match=re.escape(
            "has neither model.safetensors nor model.safetensors.index.json. It has "
            "pytorch_model.bin: re-save the model with save_pretrained(dir, safe_serialization=True).")):
        gpt2.import_gpt2(tmp_path)
    with pytest.raises(UserError, match="does not exist or is not a directory"):
        gpt2.import_gpt2(tmp_path / "absent")


def test_sharded_checkpoint_imports(exported_dir, tmp_path):
    tensors = safetensors_numpy.load_file(str(exported_dir / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for shard, shard_names in shards.items():
        safetensors_numpy.save_file({name: tensors[name] for name in shard_names},
                                    str(sharded / shard), metadata={"format": "pt"})
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (sharded / "config.json").write_text((exported_dir / "config.json").read_text())

    assert_same_params(gpt2.import_gpt2(exported_dir), gpt2.import_gpt2(sharded))


def test_hf_config_fields_without_a_decoderlm_equivalent_are_refused():
    with pytest.raises(UserError, match=re.escape(
            "config.json scale_attn_by_inverse_layer_idx=True is not supported")):
        gpt2.config_from_hf({**HF_SHAPE, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(UserError, match=re.escape(
            "config.json activation_function='quick_gelu' is not supported; supported: gelu_new,")):
        gpt2.config_from_hf({**HF_SHAPE, "activation_function": "quick_gelu"})


def test_models_gpt2_cannot_express_are_refused_on_export(tmp_path):
    llama = llama_style_config(vocab_size=VOCAB, num_layers=1, embed_dim=32, num_heads=4,
                               num_kv_heads=2, mlp_dim=48, max_len=16)
    with pytest.raises(UserError, match=re.escape(
            "TransformerConfig.position_embedding='rope' cannot be written as GPT-2")):
        gpt2.export_gpt2(random_model(llama), tmp_path)


def test_exported_config_builds_the_same_transformers_config(transformers):
    config = ours_gpt2_config(mlp_dim=96, mlp_activation="gelu_exact", tie_embeddings=False)
    hf_config = transformers.GPT2Config(**gpt2.config_to_hf(config))

    assert (hf_config.n_layer, hf_config.n_embd, hf_config.n_head, hf_config.n_positions,
            hf_config.vocab_size, hf_config.n_inner, hf_config.activation_function,
            hf_config.tie_word_embeddings) == (LAYERS, EMBED, HEADS, POSITIONS, VOCAB, 96, "gelu",
                                               False)
    assert gpt2.config_from_hf(hf_config.to_dict(), dropout_rate=0.0) == config


def test_parameters_without_a_gpt2_counterpart_are_named_on_export(tmp_path):
    model = random_model(ours_gpt2_config(scan_layers=False))
    model.layers[1].attn.qkv_scale = nnx.Param(jnp.ones(3))  # e.g. a future opt-in layout
    with pytest.raises(UserError, match=re.escape(
            "parameter layers/1/attn/qkv_scale of the model has no GPT-2 counterpart")):
        gpt2.export_gpt2(model, tmp_path)
