"""Meshes, logical-axis rules, the parameter sharding table, and global batches."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig, llama_style_config
from llmos_jax.partitioning import (DEFAULT_RULES, MESH_AXES, Layout, MeshConfig, build_mesh,
                                    check_global_batch_size, data_parallel_size,
                                    logical_to_mesh_spec)
from llmos_jax.training.optimizers import make_optimizer
from llmos_jax.training.train_state import state_shardings
from llmos_jax.objectives.model_building import model_spec


def mesh_of(data, fsdp, tensor):
    return build_mesh(MeshConfig(data, fsdp, tensor))


# ----------------------------------------------------------------------------- MeshConfig


def test_mesh_config_fills_the_minus_one_axis():
    """One -1 axis takes the remaining devices: (2, -1, 2) on 8 devices is (2, 2, 2)."""
    assert MeshConfig(2, -1, 2).resolve(8) == (2, 2, 2)
    assert MeshConfig(1, -1, 1).resolve(8) == (1, 8, 1)
    assert MeshConfig(-1, 1, 4).resolve(8) == (2, 1, 4)
    assert MeshConfig(2, 2, 2).resolve(8) == (2, 2, 2)


def test_mesh_config_rejects_two_fill_axes():
    """Two -1 axes are ambiguous: UserError at construction."""
    with pytest.raises(UserError, match="more than one axis set to -1"):
        MeshConfig(-1, -1, 2)


@pytest.mark.parametrize("size", [0, -2])
def test_mesh_config_rejects_non_positive_sizes(size):
    """A size that is neither positive nor -1 is named in the error."""
    with pytest.raises(UserError, match=f"MeshConfig.tensor={size}"):
        MeshConfig(1, -1, size)


def test_mesh_config_product_mismatch_names_sizes_and_device_count():
    """Sizes that do not multiply to the device count: the message gives sizes, product and count."""
    with pytest.raises(UserError) as err:
        MeshConfig(2, 2, 3).resolve(8)
    message = str(err.value)
    assert "data=2, fsdp=2, tensor=3" in message
    assert "needs 12 devices" in message and "8 are available" in message
    with pytest.raises(UserError, match=r"tensor=3\).*cannot fill 8 devices"):
        MeshConfig(1, -1, 3).resolve(8)
    with pytest.raises(UserError, match="8 are available"):
        build_mesh(MeshConfig(2, 2, 3))


def test_build_mesh_axes_and_shape():
    """build_mesh names the axes (data, fsdp, tensor) and uses every device exactly once."""
    mesh = build_mesh(MeshConfig(2, -1, 2))
    assert mesh.axis_names == MESH_AXES == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    assert data_parallel_size(mesh) == 4
    single = build_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    assert dict(single.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert data_parallel_size(build_mesh(MeshConfig(1, -1, 1))) == 8


# --------------------------------------------------------------------- logical_to_mesh_spec


def test_first_free_rule_wins():
    """Rules are tried in order; a rule whose mesh axes are already used is skipped."""
    rules = (("a", "x"), ("a", "y"), ("b", "x"), ("c", ("x", "y")), ("c", "z"))
    assert logical_to_mesh_spec(("a",), rules) == P("x")
    assert logical_to_mesh_spec(("a", "a"), rules) == P("x", "y")
    assert logical_to_mesh_spec(("b", "a"), rules) == P("x", "y")
    # A third 'a' finds no free rule and stays replicated (trailing None trimmed).
    assert logical_to_mesh_spec(("a", "a", "a"), rules) == P("x", "y")
    assert logical_to_mesh_spec(("a", "a", "a", "b"), rules) == P("x", "y")
    # A tuple rule with one axis taken is skipped whole, not partially applied.
    assert logical_to_mesh_spec(("b", "c"), rules) == P("x", "z")
    assert logical_to_mesh_spec(("c", "b"), rules) == P(("x", "y"))
    # Unknown names and None are replicated.
    assert logical_to_mesh_spec((None, "unknown", "a"), rules) == P(None, None, "x")


def test_tuple_mesh_axes():
    """A rule may map one logical axis onto several mesh axes (batch over data and fsdp)."""
    assert logical_to_mesh_spec(("batch", "length"), DEFAULT_RULES) == P(("data", "fsdp"))
    mesh = mesh_of(2, 2, 2)
    assert logical_to_mesh_spec(("batch", "length"), DEFAULT_RULES, mesh, (8, 16)) == P(("data", "fsdp"))
    assert logical_to_mesh_spec(("activation_batch", "activation_length", "activation_heads"),
                                DEFAULT_RULES, mesh, (4, 16, 4)) == P(("data", "fsdp"), None, "tensor")


def test_size_one_mesh_axes_are_dropped():
    """With a mesh, axes of size 1 do not appear in the spec."""
    mesh = mesh_of(1, 8, 1)
    assert logical_to_mesh_spec(("batch", "length"), DEFAULT_RULES, mesh) == P("fsdp")
    assert logical_to_mesh_spec(("vocab", "embed"), DEFAULT_RULES, mesh) == P(None, "fsdp")
    assert logical_to_mesh_spec(("heads", "kv"), DEFAULT_RULES, mesh, (4, 8)) == P()
    # Without a mesh nothing is dropped.
    assert logical_to_mesh_spec(("vocab", "embed"), DEFAULT_RULES) == P("tensor", "fsdp")


def test_indivisible_dimensions_are_replicated():
    """A mesh axis that does not divide the dimension is dropped (e.g. one MQA head under tensor=2)."""
    mesh = mesh_of(2, 2, 2)
    assert logical_to_mesh_spec(("embed", "kv_heads", "kv"), DEFAULT_RULES, mesh, (32, 1, 8)) == P("fsdp")
    assert logical_to_mesh_spec(("embed", "kv_heads", "kv"), DEFAULT_RULES, mesh, (32, 2, 8)) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(("embed",), DEFAULT_RULES, mesh, (33,)) == P()
    # Of a tuple rule, the axes that still divide are kept: 6 rows split over data=2 only.
    assert logical_to_mesh_spec(("batch",), DEFAULT_RULES, mesh, (6,)) == P("data")
    assert logical_to_mesh_spec(("batch",), DEFAULT_RULES, mesh, (3,)) == P()
    # An axis dropped for divisibility is free for a later dimension.
    rules = (("a", "tensor"), ("b", "tensor"))
    assert logical_to_mesh_spec(("a", "b"), rules, mesh, (1, 4)) == P(None, "tensor")


# ------------------------------------------------------------------ sharding golden tables

GPT2_TINY = TransformerConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, max_len=16,
                              use_bias=True, scan_layers=True)
LLAMA_TINY = llama_style_config(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4,
                                num_kv_heads=2, mlp_dim=48, max_len=16, scan_layers=True)

GOLDEN = {
    ("gpt2", (2, 2, 2)): {
        "token_embed/embedding": P("tensor", "fsdp"),
        "pos_embed/embedding": P(None, "fsdp"),
        "final_norm/scale": P("fsdp"),
        "final_norm/bias": P("fsdp"),
        "layers/attn_norm/scale": P(None, "fsdp"),
        "layers/attn_norm/bias": P(None, "fsdp"),
        "layers/attn/query/kernel": P(None, "fsdp", "tensor"),
        "layers/attn/query/bias": P(None, "tensor"),
        "layers/attn/key/kernel": P(None, "fsdp", "tensor"),
        "layers/attn/key/bias": P(None, "tensor"),
        "layers/attn/value/kernel": P(None, "fsdp", "tensor"),
        "layers/attn/value/bias": P(None, "tensor"),
        "layers/attn/out/kernel": P(None, "tensor", None, "fsdp"),
        "layers/attn/out/bias": P(None, "fsdp"),
        "layers/mlp_norm/scale": P(None, "fsdp"),
        "layers/mlp_norm/bias": P(None, "fsdp"),
        "layers/mlp/wi/kernel": P(None, "fsdp", "tensor"),
        "layers/mlp/wi/bias": P(None, "tensor"),
        "layers/mlp/wo/kernel": P(None, "tensor", "fsdp"),
        "layers/mlp/wo/bias": P(None, "fsdp"),
    },
    ("gpt2", (1, 8, 1)): {
        "token_embed/embedding": P(None, "fsdp"),
        "pos_embed/embedding": P(None, "fsdp"),
        "final_norm/scale": P("fsdp"),
        "final_norm/bias": P("fsdp"),
        "layers/attn_norm/scale": P(None, "fsdp"),
        "layers/attn_norm/bias": P(None, "fsdp"),
        "layers/attn/query/kernel": P(None, "fsdp"),
        "layers/attn/query/bias": P(),
        "layers/attn/key/kernel": P(None, "fsdp"),
        "layers/attn/key/bias": P(),
        "layers/attn/value/kernel": P(None, "fsdp"),
        "layers/attn/value/bias": P(),
        "layers/attn/out/kernel": P(None, None, None, "fsdp"),
        "layers/attn/out/bias": P(None, "fsdp"),
        "layers/mlp_norm/scale": P(None, "fsdp"),
        "layers/mlp_norm/bias": P(None, "fsdp"),
        "layers/mlp/wi/kernel": P(None, "fsdp"),
        "layers/mlp/wi/bias": P(),
        "layers/mlp/wo/kernel": P(None, None, "fsdp"),
        "layers/mlp/wo/bias": P(None, "fsdp"),
    },
    ("llama", (2, 2, 2)): {
        "token_embed/embedding": P("tensor", "fsdp"),
        "lm_head/kernel": P("fsdp", "tensor"),
        "final_norm/scale": P("fsdp"),
        "layers/attn_norm/scale": P(None, "fsdp"),
        "layers/attn/query/kernel": P(None, "fsdp", "tensor"),
        "layers/attn/key/kernel": P(None, "fsdp", "tensor"),
        "layers/attn/value/kernel": P(None, "fsdp", "tensor"),
        "layers/attn/out/kernel": P(None, "tensor", None, "fsdp"),
        "layers/mlp_norm/scale": P(None, "fsdp"),
        "layers/mlp/wi_gate/kernel": P(None, "fsdp", "tensor"),
        "layers/mlp/wi_up/kernel": P(None, "fsdp", "tensor"),
        "layers/mlp/wo/kernel": P(None, "tensor", "fsdp"),
    },
    ("llama", (1, 8, 1)): {
        "token_embed/embedding": P(None, "fsdp"),
        "lm_head/kernel": P("fsdp"),
        "final_norm/scale": P("fsdp"),
        "layers/attn_norm/scale": P(None, "fsdp"),
        "layers/attn/query/kernel": P(None, "fsdp"),
        "layers/attn/key/kernel": P(None, "fsdp"),
        "layers/attn/value/kernel": P(None, "fsdp"),
        "layers/attn/out/kernel": P(None, None, None, "fsdp"),
        "layers/mlp_norm/scale": P(None, "fsdp"),
        "layers/mlp/wi_gate/kernel": P(None, "fsdp"),
        "layers/mlp/wi_up/kernel": P(None, "fsdp"),
        "layers/mlp/wo/kernel": P(None, None, "fsdp"),
    },
}
CONFIGS = {"gpt2": GPT2_TINY, "llama": LLAMA_TINY}
GOLDEN_CASES = pytest.mark.parametrize(
    "name, mesh_shape", sorted(GOLDEN),
    ids=[f"{name}-{'x'.join(map(str, shape))}" for name, shape in sorted(GOLDEN)])


def flat_specs(tree) -> dict:
    """{'a/b/c': PartitionSpec} for a tree of NamedShardings."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): s.spec for path, s in flat}


def spec_for(name: str):
    config = CONFIGS[name]
    return model_spec(lambda rngs: DecoderLM(config, rngs=rngs), 0)


@GOLDEN_CASES
def test_param_sharding_golden_table(name, mesh_shape):
    """Every parameter's PartitionSpec, written out, for scanned GPT-2 and Llama configs."""
    mesh = mesh_of(*mesh_shape)
    specs = flat_specs(Layout(mesh, DEFAULT_RULES).param_shardings(spec_for(name)))
    assert specs == GOLDEN[(name, mesh_shape)]


@GOLDEN_CASES
def test_adamw_moments_are_sharded_like_params(name, mesh_shape):
    """AdamW's mu and nu (inside make_optimizer's chain) take their parameter's sharding."""
    mesh = mesh_of(*mesh_shape)
    spec = spec_for(name)
    shardings = state_shardings(spec, make_optimizer(), Layout(mesh, DEFAULT_RULES))
    assert flat_specs(shardings.params) == GOLDEN[(name, mesh_shape)]
    for moment in ("mu", "nu"):
        assert flat_specs(optax.tree_utils.tree_get(shardings.opt_state, moment)) == \
            GOLDEN[(name, mesh_shape)]
    # Counters and hyperparameters are replicated scalars.
    assert optax.tree_utils.tree_get(shardings.opt_state, "learning_rate").spec == P()
    assert shardings.step.spec == P()


def test_adafactor_factored_moments_get_valid_shardings():
    """Adafactor's factored (lower-rank) moments get shardings that jit accepts for init."""
    config = TransformerConfig(vocab_size=256, num_layers=2, embed_dim=128, num_heads=4,
                               mlp_dim=256, max_len=16)
    mesh = mesh_of(2, 2, 2)
    spec = model_spec(lambda rngs: DecoderLM(config, rngs=rngs), 0)
    tx = make_optimizer(name="adafactor")
    shardings = state_shardings(spec, tx, Layout(mesh, DEFAULT_RULES))
    params = jax.device_put(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                         spec.abstract_params), shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)

    got = jax.tree.map(lambda x: x.sharding, opt_state)
    assert jax.tree.all(jax.tree.map(lambda a, b: a == b, got, shardings.opt_state))
    factored = optax.tree_utils.tree_get(opt_state, "v_row")
    wi_row = factored["layers"]["mlp"]["wi"]["kernel"]
    # The (layers, 128, 256) MLP kernel really is factored: its row moment drops a dimension.
    assert wi_row.ndim == 2 and wi_row.shape[0] == 2
    assert wi_row.sharding.spec == P()
    # Unfactored second moments keep their parameter's sharding.
    full_v = optax.tree_utils.tree_get(opt_state, "v")
    assert full_v["pos_embed"]["embedding"].sharding.spec == P(None, "fsdp")
    assert full_v["layers"]["attn"]["query"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
    for leaf in jax.tree.leaves(opt_state):
        for dim, axis in zip(leaf.shape, leaf.sharding.spec):
            names = () if axis is None else (axis,) if isinstance(axis, str) else axis
            assert dim % int(np.prod([mesh.shape[n] for n in names])) == 0


# ---------------------------------------------------------------------------- global batch


def test_check_global_batch_size_names_parameter_and_dp_size():
    """A batch not divisible by data x fsdp raises UserError naming the parameter and the size."""
    mesh = mesh_of(2, 2, 2)
    check_global_batch_size(8, mesh, name="train_batch_size")
    check_global_batch_size(4, mesh, name="train_batch_size")  # tensor does not split batches
    with pytest.raises(UserError, match=re.escape("train_batch_size=6")) as err:
        check_global_batch_size(6, mesh, name="train_batch_size")
    assert "data-parallel size 4" in str(err.value)
    with pytest.raises(UserError, match=r"eval_batch_size=4 .*data-parallel size 8"):
        check_global_batch_size(4, mesh_of(1, 8, 1), name="eval_batch_size")


def test_host_local_to_global_shards_rows_over_data_and_fsdp():
    """On one process the global batch equals the local one, rows split over (data, fsdp)."""
    mesh = mesh_of(2, 2, 2)
    local = {"tokens": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
             "weights": np.linspace(0, 1, 8 * 5, dtype=np.float32).reshape(8, 5)}
    batch = Layout(mesh, DEFAULT_RULES).global_batch(local)
    assert set(batch) == set(local)
    for name, array in batch.items():
        assert isinstance(array, jax.Array)
        assert array.shape == local[name].shape and array.dtype == local[name].dtype
        assert array.sharding.spec == P(("data", "fsdp"))
        np.testing.assert_array_equal(np.asarray(array), local[name])
        position = {d: idx for idx, d in np.ndenumerate(mesh.devices)}
        for shard in array.addressable_shards:
            data_index, fsdp_index, _ = position[shard.device]
            start = (data_index * 2 + fsdp_index) * 2
            assert shard.data.shape == (2, 5)
            np.testing.assert_array_equal(np.asarray(shard.data), local[name][start:start + 2])
