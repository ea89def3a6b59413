"""T5 v1.0 / v1.1 weights in and out: parity with transformers (teacher forcing),
export reloads in transformers, exact round trips, errors naming tensors."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from convert_helpers import assert_same_params, max_abs, randomise, randomise_torch  # noqa: E402
from flax import nnx  # noqa: E402

from llmos_jax.convert import hf_checkpoint, t5  # noqa: E402
from llmos_jax.convert.hf_models import export_hf_model, import_hf_model  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402
from llmos_jax.models import EncoderDecoderLM, t5_config  # noqa: E402

TOLERANCE = 1e-4
SHAPE = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
             num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20)
FEED_FORWARD = {"1.0": "relu", "1.1": "gated-gelu"}


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    encoder_tokens = rng.integers(2, 64, size=(2, 11))
    encoder_mask = np.ones((2, 11), int)
    encoder_mask[1, 7:] = 0
    decoder_tokens = rng.integers(2, 64, size=(2, 9))
    return encoder_tokens, encoder_mask, decoder_tokens


def hf_t5(torch, transformers, version, directory):
    config = transformers.T5Config(**SHAPE, feed_forward_proj=FEED_FORWARD[version],
                                   tie_word_embeddings=version == "1.0")
    model = randomise_torch(torch, transformers.T5ForConditionalGeneration(config), r"layer_norm")
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_t5_matches_transformers_with_teacher_forcing(version, batch, torch, transformers,
                                                      tmp_path):
    hf_model = hf_t5(torch, transformers, version, tmp_path)
    encoder_tokens, encoder_mask, decoder_tokens = batch
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(encoder_tokens),
                       attention_mask=torch.tensor(encoder_mask),
                       decoder_input_ids=torch.tensor(decoder_tokens), output_hidden_states=True)
    ours = t5.import_t5(tmp_path, dropout_rate=0.0)
    assert ours.config.scale_decoder_output == (version == "1.0")
    assert ours.config.mlp_activation == ("relu" if version == "1.0" else "geglu")
    encoded = ours.encode(jnp.asarray(encoder_tokens), segment_ids=jnp.asarray(encoder_mask))
    real = encoder_mask.astype(bool)
    assert max_abs(np.asarray(encoded)[real], out.encoder_last_hidden_state.numpy()[real]) < TOLERANCE
    decoded = ours.decode(jnp.asarray(decoder_tokens), encoded,
                          encoder_segment_ids=jnp.asarray(encoder_mask))
    assert max_abs(decoded, out.decoder_hidden_states[-1].numpy()) < TOLERANCE
    logits = ours(jnp.asarray(encoder_tokens), jnp.asarray(decoder_tokens),
                  encoder_segment_ids=jnp.asarray(encoder_mask))
    assert max_abs(logits, out.logits.numpy()) < TOLERANCE
    unstacked = t5.import_t5(tmp_path, dropout_rate=0.0, scan_layers=False)
    assert max_abs(unstacked(jnp.asarray(encoder_tokens), jnp.asarray(decoder_tokens),
                             encoder_segment_ids=jnp.asarray(encoder_mask)), logits) < 1e-5


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_export_reloads_in_transformers_and_round_trips(version, batch, torch, transformers,
                                                        tmp_path):
    # transformers 5 always ties lm_head to shared, so the transformers check uses tied
    # weights; v1.1 keeps its unscaled output.
    config = t5_config(version, vocab_size=64, num_layers=2, num_decoder_layers=3, embed_dim=32,
                       num_heads=4, head_dim=8, mlp_dim=48, relative_buckets=8,
                       relative_max_distance=20, dropout_rate=0.0, tie_embeddings=True)
    ours = randomise(EncoderDecoderLM(config, rngs=nnx.Rngs(0)))
    export_hf_model(ours, tmp_path, model_type="t5")
    encoder_tokens, encoder_mask, decoder_tokens = batch
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        hf_logits = hf_model(input_ids=torch.tensor(encoder_tokens),
                             attention_mask=torch.tensor(encoder_mask),
                             decoder_input_ids=torch.tensor(decoder_tokens)).logits.numpy()
    logits = ours(jnp.asarray(encoder_tokens), jnp.asarray(decoder_tokens),
                  encoder_segment_ids=jnp.asarray(encoder_mask))
    assert max_abs(logits, hf_logits) < TOLERANCE
    assert_same_params(ours, import_hf_model(tmp_path, dropout_rate=0.0))


def test_untied_v1_1_round_trips_exactly(tmp_path):
    config = t5_config("1.1", vocab_size=64, num_layers=2, embed_dim=32, num_heads=4,
                       head_dim=8, mlp_dim=48, relative_buckets=8, relative_max_distance=20,
                       scan_layers=False)
    ours = randomise(EncoderDecoderLM(config, rngs=nnx.Rngs(0)))
    t5.export_t5(ours, tmp_path)
    back = t5.import_t5(tmp_path, scan_layers=False)
    assert back.lm_head is not None and not back.config.scale_decoder_output
    assert_same_params(ours, back)


def test_errors_name_the_tensor(tmp_path, torch, transformers):
    hf_t5(torch, transformers, "1.1", tmp_path / "good")
    checkpoint = hf_checkpoint.read_checkpoint(tmp_path / "good")
    tensors = dict(checkpoint.tensors)
    del tensors["decoder.block.2.layer.1.EncDecAttention.k.weight"]
    hf_checkpoint.write_checkpoint(tmp_path / "missing", checkpoint.config, tensors)
    with pytest.raises(UserError, match=r"missing tensor 'decoder\.block\.2\.layer\.1\.EncDecAttention\.k\.weight'"):
        t5.import_t5(tmp_path / "missing")
    hf_checkpoint.write_checkpoint(tmp_path / "layers", dict(checkpoint.config, num_decoder_layers=2),
                                   checkpoint.tensors)
    with pytest.raises(UserError, match=r"unexpected tensor 'decoder\.block\.2\."):
        t5.import_t5(tmp_path / "layers")
    hf_checkpoint.write_checkpoint(tmp_path / "shape", dict(checkpoint.config, d_ff=40),
                                   checkpoint.tensors)
    with pytest.raises(UserError, match=r"DenseReluDense\.wi_0\.weight.*has shape"):
        t5.import_t5(tmp_path / "shape")
