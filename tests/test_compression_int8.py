"""int8 weight-only quantization: error bound, logits near float for all three families,
int8 parameters inside the compiled decode step, sharded equals unsharded, served at load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmos_jax.compression.int8 import (BLOCK_BYTES, Int8Dense, Int8Embedding, blockwise_matmul,
                                        block_rows, parameter_bytes, quantize_int8,
                                        quantize_per_channel)
from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, EncoderConfig, EncoderDecoderConfig, TransformerConfig
from llmos_jax.models.encoder_decoder import EncoderDecoderLM
from llmos_jax.models.heads import EncoderForSequenceClassification
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.partitioning import DEFAULT_RULES, Layout, LogicalSharder, MeshConfig, build_mesh

VOCAB, LENGTH = 64, 8
DECODER = TransformerConfig(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64,
                            max_len=LENGTH, scan_layers=True, dropout_rate=0.0, init_std=0.1)
BERT = EncoderConfig(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=2, max_len=LENGTH,
                     position_embedding="learned", norm="layernorm", use_bias=True,
                     mlp_activation="gelu_exact", dropout_rate=0.0, init_std=0.1)
T5 = EncoderDecoderConfig(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=2, head_dim=16,
                          mlp_dim=64, position_embedding="none", norm="rmsnorm",
                          mlp_activation="relu", use_bias=False, tie_embeddings=True,
                          dropout_rate=0.0, relative_buckets=8, relative_max_distance=16,
                          init_std=0.1)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, VOCAB, (4, LENGTH)), jnp.int32)


def test_dequantized_weights_are_within_half_a_step_per_channel():
    w = jax.random.normal(jax.random.key(0), (48, 3, 16)) * jnp.linspace(0.01, 2.0, 16)
    q, scale = quantize_per_channel(w, (0,))
    assert q.dtype == jnp.int8 and scale.shape == (3, 16)
    error = jnp.abs(q.astype(jnp.float32) * scale - w)
    assert bool(jnp.all(error <= scale / 2 + 1e-6))
    assert int(jnp.max(jnp.abs(q))) == 127  # the range is used in full


@pytest.mark.parametrize("family,build,run", [
    ("decoder", lambda: DecoderLM(DECODER, rngs=nnx.Rngs(0)), lambda m: m(TOKENS)),
    ("bert", lambda: EncoderForSequenceClassification(BERT, 3, rngs=nnx.Rngs(0)),
     lambda m: m(TOKENS)),
    ("t5", lambda: EncoderDecoderLM(T5, rngs=nnx.Rngs(0)), lambda m: m(TOKENS, TOKENS)),
])
def test_quantized_logits_stay_close_to_float(family, build, run):
    model = build()
    run = nnx.jit(run)
    reference = run(model)
    float_bytes = parameter_bytes(nnx.state(model, nnx.Param))
    counts = quantize_int8(model)
    assert counts["dense"] >= 6 and counts["embedding"] == 1  # a scanned stack is one module
    params = nnx.state(model, nnx.Param)
    assert any(x.dtype == jnp.int8 for x in jax.tree.leaves(params))
    assert parameter_bytes(params) < 0.45 * float_bytes  # biases, norms, positions stay float
    quantized = run(model)
    error = float(jnp.max(jnp.abs(quantized - reference)))
    assert error < 0.02 * float(jnp.max(jnp.abs(reference))), (family, error)


def test_the_compiled_decode_step_takes_int8_weights(tmp_path):
    from serving_api_helpers import hf_gpt2_folder

    from llmos_jax.serving.model_source import load_served_model
    from llmos_jax.serving.slot_programs import SlotPrograms
    from llmos_jax.serving.slot_sampling import settings_rows

    hf_gpt2_folder(tmp_path / "gpt2")
    plain = load_served_model(tmp_path / "gpt2")
    served = load_served_model(tmp_path / "gpt2", quantize="int8")
    assert isinstance(served.model.layers[0].attn.query, Int8Dense)
    assert isinstance(served.model.token_embed, Int8Embedding)
    ids = jnp.asarray([served.encode_prompt("the cat sat on the mat")], jnp.int32)
    ours, theirs = nnx.jit(lambda m: m(ids))(served.model), nnx.jit(lambda m: m(ids))(plain.model)
    assert float(jnp.max(jnp.abs(ours - theirs))) < 0.02 * float(jnp.max(jnp.abs(theirs)))

    def step_arguments(model):
        programs = SlotPrograms(model, slots=2, context=16, prefill_chunk=8)
        lowered = programs._step_fn.lower(
            programs.params, programs.initial_state(), settings_rows([None, None]),
            np.zeros((2,), bool), np.zeros((2,), np.int32), read_len=16)
        compiled = lowered.compile()
        dtypes = [leaf.dtype for leaf in jax.tree.leaves(lowered.args_info[0])]
        return dtypes, compiled.memory_analysis().argument_size_in_bytes

    int8_dtypes, int8_bytes = step_arguments(served.model)
    float_dtypes, float_bytes = step_arguments(plain.model)
    kernels = 4 * len(served.model.layers) + 2 * len(served.model.layers)  # attn + mlp
    assert int8_dtypes.count(jnp.int8) == kernels + 1  # + the token table
    assert jnp.int8 not in float_dtypes
    assert int8_bytes < float_bytes
    with pytest.raises(UserError, match="--quantize='int4' is not supported"):
        load_served_model(tmp_path / "gpt2", quantize="int4")


def test_sharded_quantized_model_equals_unsharded():
    mesh = build_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    layout = Layout(mesh, DEFAULT_RULES)

    def build(rngs, shard):
        model = DecoderLM(DECODER, rngs=rngs, shard=shard)
        quantize_int8(model)
        return model

    spec = model_spec(lambda rngs: build(rngs, LogicalSharder(mesh, DEFAULT_RULES)), seed=0)
    params = spec.init_params()
    shardings = layout.param_shardings(spec)
    sharded = jax.device_put(params, shardings)
    kernel = sharded["layers"]["attn"]["query"]["kernel"]
    assert kernel.dtype == jnp.int8 and len(kernel.sharding.device_set) > 1
    run = jax.jit(lambda p: spec.merge(p)(TOKENS))
    plain = model_spec(lambda rngs: build(rngs, lambda x, a: x), seed=0)
    expected = jax.jit(lambda p: plain.merge(p)(TOKENS))(params)
    np.testing.assert_allclose(run(sharded), expected, atol=1e-5)


@pytest.mark.parametrize("transpose_q", [False, True])
def test_blockwise_matmul_equals_the_whole_conversion_with_small_temporaries(transpose_q):
    rows, cols = 512, 8192  # 16 MiB as float32: 8 blocks of BLOCK_BYTES
    q = jnp.asarray(np.random.default_rng(0).integers(-127, 128, (rows, cols)), jnp.int8)
    x = jax.random.normal(jax.random.key(0), (3, cols if transpose_q else rows))
    whole = x @ (q.astype(jnp.float32).T if transpose_q else q.astype(jnp.float32))
    blockwise = jax.jit(lambda x, q: blockwise_matmul(x, q, transpose_q=transpose_q))
    np.testing.assert_allclose(blockwise(x, q), whole, rtol=1e-5, atol=1e-2)
    # Only one block is converted at a time: the temporaries stay far below the float
    # copy of the weight (16 MiB) that converting it whole needs.
    temporaries = blockwise.lower(x, q).compile().memory_analysis().temp_size_in_bytes
    assert temporaries < 2 * BLOCK_BYTES, temporaries


def test_blocks_divide_the_rows_near_block_bytes_and_are_never_tiny():
    assert block_rows(512, 8192 * 4) == 64
    assert block_rows(768, 3072 * 4) == 192     # GPT-2 small's MLP in: 4 blocks of 2.4 MB
    assert block_rows(50257, 768 * 4) == 1733   # its tied output table: 29 x 1733 rows
    assert block_rows(65, 128 * 4) == 65        # fits one block: converted whole
    assert block_rows(4099, 4096 * 4) == 4099   # a prime: blocks of one row would crawl
