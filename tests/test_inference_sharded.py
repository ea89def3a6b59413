"""Decoding on an 8-device data x fsdp x tensor mesh equals decoding on one device."""

import jax
import numpy as np
from flax import nnx
from inference_helpers import random_model
from sharding_helpers import sharded_copy

from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.generate import generate
from llmos_jax.inference.kv_cache import CACHE_AXES
from llmos_jax.models import DecoderLM, EncoderDecoderLM, llama_style_config, t5_config
from llmos_jax.partitioning import DEFAULT_RULES, MeshConfig, build_mesh
from llmos_jax.partitioning.rules import logical_to_mesh_spec

PROMPTS = [[5, 9, 2], [7, 1, 4, 4, 8, 3], [2], [11, 12, 13, 14]]
CONFIGS = [DecodeConfig(max_new_tokens=6),
           DecodeConfig(method="beam", max_new_tokens=5, num_beams=3, num_return_sequences=2),
           DecodeConfig(method="sample", max_new_tokens=6, top_k=10, top_p=0.9)]


def assert_same_results(sharded, single):
    for left, right in zip(sharded, single):
        assert [c.tokens for c in left.completions] == [c.tokens for c in right.completions]
        np.testing.assert_allclose([c.score for c in left.completions],
                                   [c.score for c in right.completions], atol=1e-4)


def test_sharded_decoder_decoding_equals_single_device():
    config = llama_style_config(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4,
                                num_kv_heads=2, mlp_dim=48, max_len=32)
    single = random_model(lambda rngs: DecoderLM(config, rngs=rngs))
    sharded, _ = sharded_copy(lambda shard: DecoderLM(config, rngs=nnx.Rngs(0), shard=shard),
                              single)
    kernel = sharded.token_embed.embedding.get_value()
    assert len(kernel.sharding.device_set) == 8
    for decode_config in CONFIGS:
        assert_same_results(generate(sharded, None, PROMPTS, decode_config),
                            generate(single, None, PROMPTS, decode_config))


def test_sharded_encoder_decoder_decoding_equals_single_device():
    config = t5_config("1.1", vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, head_dim=8,
                       mlp_dim=48, relative_buckets=8, relative_max_distance=20, dropout_rate=0.0)
    single = random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs))
    sharded, _ = sharded_copy(lambda shard: EncoderDecoderLM(config, rngs=nnx.Rngs(0),
                                                             shard=shard), single)
    for decode_config in CONFIGS[:1]:
        assert_same_results(generate(sharded, None, PROMPTS, decode_config),
                            generate(single, None, PROMPTS, decode_config))


def test_cache_layout_follows_the_rules():
    mesh = build_mesh(MeshConfig(2, 2, 2))
    # [rows, kv_heads, slots, head_dim]: rows by data parallelism, heads by tensor parallelism.
    spec = logical_to_mesh_spec(CACHE_AXES, DEFAULT_RULES, mesh, (8, 2, 32, 8))
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor")
    # One key/value head (multi-query): the tensor axis is dropped, the head stays whole.
    spec = logical_to_mesh_spec(CACHE_AXES, DEFAULT_RULES, mesh, (8, 1, 32, 8))
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"))
