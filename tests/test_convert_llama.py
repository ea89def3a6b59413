"""Llama, Mistral, Qwen2 and Gemma weights in and out: parity with transformers
(logits, greedy decoding), sharded files, export back, refused settings."""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from convert_helpers import max_abs, randomise_torch  # noqa: E402
from flax import nnx  # noqa: E402

from llmos_jax.convert import llama  # noqa: E402
from llmos_jax.convert.hf_models import export_hf_model, import_hf_model  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402
from llmos_jax.inference.decode_config import DecodeConfig  # noqa: E402
from llmos_jax.inference.generate import generate  # noqa: E402
from llmos_jax.models import DecoderLM  # noqa: E402

TOLERANCE = 1e-4
VOCAB = 97
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
# (model_type, config class, extra fields): GQA with 2 KV heads everywhere, each
# family's own switch, and the RoPE scalings at a context past the original one.
CASES = {
    "llama3_rope": ("LlamaConfig", dict(
        rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0,
                                               original_max_position_embeddings=32))),
    "llama_linear_rope": ("LlamaConfig", dict(rope_scaling=dict(rope_type="linear", factor=4.0))),
    "mistral_window": ("MistralConfig", dict(sliding_window=6, head_dim=8)),
    "qwen2_qkv_bias": ("Qwen2Config", dict()),
    "gemma": ("GemmaConfig", dict(head_dim=16, hidden_act="gelu_pytorch_tanh")),
}


@pytest.fixture(scope="module")
def hf_models(torch, transformers, tmp_path_factory):
    """Each case as a randomised transformers model saved to its own folder."""
    built = {}
    for name, (config_class, extra) in CASES.items():
        config = getattr(transformers, config_class)(**SHAPE, **extra)
        config._attn_implementation = "eager"
        model_class = getattr(transformers, config_class.replace("Config", "ForCausalLM"))
        torch.manual_seed(0)
        model = randomise_torch(torch, model_class(config), r"norm\.weight")
        if config_class == "GemmaConfig":  # Gemma's norms hold w for 1 + w: centre on 0
            with torch.no_grad():
                for key, parameter in model.named_parameters():
                    if key.endswith("norm.weight"):
                        parameter.sub_(1.0)
        directory = tmp_path_factory.mktemp(name)
        # Small shards: every import below reads an index and several files.
        model.save_pretrained(directory, max_shard_size="20KB")
        built[name] = (directory, model)
    return built


def tokens_of(length: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, VOCAB, size=(batch, length))


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_decoding_match_transformers(case, hf_models, torch):
    directory, hf_model = hf_models[case]
    assert (directory / "model.safetensors.index.json").is_file()
    tokens = tokens_of(80)  # past the llama3 case's original 32 positions and Mistral's window
    with torch.no_grad():
        expected = hf_model(torch.tensor(tokens)).logits.numpy()
    ours = import_hf_model(directory, scan_layers=False)
    assert ours.config.num_kv_heads == 2
    assert max_abs(ours(jnp.asarray(tokens)), expected) < TOLERANCE

    prompt = tokens_of(12, batch=1, seed=1)
    hf_model.generation_config.eos_token_id = None  # EOS is just a token here, as in ours
    with torch.no_grad():
        hf_out = hf_model.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False,
                                   pad_token_id=0)
    results = generate(ours, None, prompt.tolist(), DecodeConfig(max_new_tokens=12, pad_id=0))
    assert list(results[0].tokens) == hf_out[0, 12:].tolist()


def test_export_reloads_in_transformers_with_same_logits(hf_models, transformers, torch,
                                                         tmp_path):
    tokens = tokens_of(40)
    for case in ("llama3_rope", "qwen2_qkv_bias", "gemma", "mistral_window"):
        directory, hf_model = hf_models[case]
        ours = import_hf_model(directory)
        out = tmp_path / case
        export_hf_model(ours, out)  # the model type is found from the config alone
        assert json.loads((out / "config.json").read_text())["model_type"] == \
            hf_model.config.model_type
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            theirs = reloaded(torch.tensor(tokens)).logits.numpy()
        assert max_abs(ours(jnp.asarray(tokens)), theirs) < TOLERANCE, case


def test_scanned_import_equals_unrolled(hf_models):
    from llmos_jax.training.warm_start import hf_model_config

    directory, _ = hf_models["mistral_window"]
    # What a warm start (InitFrom.hf_dir with @hf_model_config()) builds.
    assert hf_model_config(str(directory)) == import_hf_model(directory).config
    tokens = jnp.asarray(tokens_of(20))
    assert max_abs(import_hf_model(directory)(tokens),
                   import_hf_model(directory, scan_layers=False)(tokens)) < 1e-5


def _write_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, message", [
    (dict(rope_parameters=dict(rope_type="yarn", factor=2.0, rope_theta=1e4)),
     "config.json rope_parameters.rope_type='yarn' is not supported"),
    (dict(rope_parameters=None, rope_scaling=dict(type="dynamic", factor=2.0)),
     "config.json rope_scaling.rope_type='dynamic' is not supported"),
    (dict(attn_logit_softcapping=50.0),
     "config.json attn_logit_softcapping=50.0 is not supported"),
    (dict(final_logit_softcapping=30.0),
     "config.json final_logit_softcapping=30.0 is not supported"),
    (dict(hidden_act="relu"), "config.json hidden_act='relu' is not supported"),
    (dict(mlp_bias=True), "config.json mlp_bias=True is not supported"),
])
def test_unsupported_settings_are_refused_by_name(changes, message):
    config = {**SHAPE, "model_type": "llama",
              "rope_parameters": dict(rope_type="default", rope_theta=1e4), **changes}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(UserError, match=re.escape(message)):
        llama.config_from_hf(config)


def test_qwen2_window_and_shape_mismatch_are_refused(hf_models, tmp_path):
    with pytest.raises(UserError, match=re.escape("use_sliding_window=True is not supported")):
        llama.config_from_hf({**SHAPE, "model_type": "qwen2", "use_sliding_window": True})
    directory, _ = hf_models["llama_linear_rope"]
    _write_config(directory, num_key_value_heads=4)
    try:
        with pytest.raises(UserError, match=r"k_proj\.weight.*has shape"):
            import_hf_model(directory)
    finally:
        _write_config(directory, num_key_value_heads=2)


def test_sliding_window_masks_far_tokens_in_training_and_decoding():
    """A token beyond the window changes nothing downstream, in the full and cached paths."""
    config = llama.config_from_hf({**SHAPE, "model_type": "mistral", "sliding_window": 4},
                                  scan_layers=False)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    tokens = tokens_of(10, batch=1)
    changed = tokens.copy()
    changed[0, 0] = (changed[0, 0] + 1) % VOCAB
    # With 2 layers, position 0 reaches position 2 * (4 - 1) = 6 at most.
    left, right = model(jnp.asarray(tokens)), model(jnp.asarray(changed))
    assert max_abs(left[:, 7:], right[:, 7:]) == 0.0
    assert max_abs(left[:, :7], right[:, :7]) > 0.0
    # Decoding over the KV cache masks the window too: each greedy token is the
    # argmax of the full forward pass over prompt + generated tokens.
    generated = list(generate(model, None, tokens.tolist(),
                              DecodeConfig(max_new_tokens=4, pad_id=0))[0].tokens)
    full = model(jnp.asarray([tokens[0].tolist() + generated[:-1]]))
    assert generated == np.argmax(np.asarray(full)[0, 9:], axis=-1).tolist()
