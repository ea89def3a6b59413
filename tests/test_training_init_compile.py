"""The initialiser compiles at XLA:CPU -O1 (`train_state.init_compiler_options`).

It is a first run's start-up cost, so it must stay bit-identical to the default
compile's draws: runs and tests rely on `seed` reproducing the initialisation.
"""

import jax
import numpy as np
import pytest

from llmos_jax.models import EncoderConfig, EncoderDecoderConfig, TransformerConfig
from llmos_jax.objectives import CausalLm, Seq2Seq, SequenceClassification
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.partitioning import Layout, MeshConfig
from llmos_jax.training import train_state
from llmos_jax.training.optimizers import make_optimizer

GPT2_LIKE = TransformerConfig(vocab_size=65, num_layers=2, embed_dim=32, num_heads=4, head_dim=8,
                              mlp_dim=64, max_len=16, dropout_rate=0.0)
LLAMA_LIKE = TransformerConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4,
                               num_kv_heads=2, head_dim=8, mlp_dim=48, max_len=16,
                               position_embedding="rope", norm="rmsnorm",
                               mlp_activation="swiglu", use_bias=False, tie_embeddings=False,
                               dropout_rate=0.0)
BERT_LIKE = EncoderConfig(vocab_size=40, num_layers=2, embed_dim=32, num_heads=2, max_len=16,
                          position_embedding="learned", norm="layernorm", use_bias=True,
                          mlp_activation="gelu_exact", dropout_rate=0.0, norm_placement="post")
T5_LIKE = EncoderDecoderConfig(vocab_size=40, num_layers=2, embed_dim=32, num_heads=2,
                               head_dim=16, mlp_dim=64, position_embedding="none",
                               norm="rmsnorm", mlp_activation="relu", use_bias=False,
                               tie_embeddings=True, dropout_rate=0.0, relative_buckets=8,
                               relative_max_distance=16)


def _init(monkeypatch, objective, config, compiler_options):
    layout = Layout.build(MeshConfig(data=2, fsdp=4, tensor=1))
    spec = model_spec(lambda rngs: objective.build_model(
        config, rngs=rngs, shard=layout.activation_sharder), seed=3)
    tx = make_optimizer(name="adamw", learning_rate=1e-3, weight_decay=0.1, grad_clip_norm=1.0)
    shardings = train_state.state_shardings(spec, tx, layout)
    monkeypatch.setattr(train_state, "init_compiler_options", lambda: compiler_options)
    return train_state.init_train_state(spec, tx, shardings), shardings


@pytest.mark.parametrize("objective, config", [
    (CausalLm(), GPT2_LIKE), (CausalLm(), LLAMA_LIKE),
    (SequenceClassification(num_classes=3), BERT_LIKE), (Seq2Seq(), T5_LIKE)],
    ids=["gpt2", "llama", "bert", "t5"])
def test_o1_initialiser_is_bit_identical_to_the_default_compile(monkeypatch, objective, config):
    fast, shardings = _init(monkeypatch, objective, config,
                            train_state.CPU_INIT_COMPILER_OPTIONS)
    default, _ = _init(monkeypatch, objective, config, None)
    fast_leaves = jax.tree.leaves(jax.device_get(fast))
    default_leaves = jax.tree.leaves(jax.device_get(default))
    assert len(fast_leaves) == len(default_leaves) > 10
    for got, want in zip(fast_leaves, default_leaves):
        np.testing.assert_array_equal(got, want)
    # Still placed in its shards, as the layout says.
    for leaf, sharding in zip(jax.tree.leaves(fast), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def test_options_apply_on_cpu_only():
    assert jax.default_backend() == "cpu"
    assert train_state.init_compiler_options() == {"xla_backend_optimization_level": 1}
