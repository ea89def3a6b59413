"""DecoderLM behaviour: shapes, layer stacking, remat, masking, dropout, dtypes, axes, config."""

import functools
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig, axes, llama_style_config

VOCAB, LENGTH, BATCH = 64, 16, 2


def gpt2_tiny(**overrides) -> TransformerConfig:
    fields = dict(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=4, max_len=LENGTH)
    fields.update(overrides)
    return TransformerConfig(**fields)


def llama_tiny(num_kv_heads: int = 2, **overrides) -> TransformerConfig:
    return llama_style_config(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=4,
                              num_kv_heads=num_kv_heads, mlp_dim=48, max_len=LENGTH, **overrides)


CONFIGS = {
    "gpt2": gpt2_tiny,
    "llama_gqa": lambda **kw: llama_tiny(2, **kw),
    "llama_mqa": lambda **kw: llama_tiny(1, **kw),
}


def make(config: TransformerConfig, seed: int = 0) -> DecoderLM:
    """A DecoderLM whose weights are drawn on the host from `seed`.

    Built abstractly and filled from numpy: eager initialisation compiles one
    small XLA program per parameter shape, which would dominate this file.
    Norm scales are near 1; every other weight (biases included) is small
    noise, so no term of the forward pass is trivially zero.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        scale = path[-1].key == "scale"
        values = (1.0 if scale else 0.0) + rng.normal(0.0, 0.1 if scale else 0.05, leaf.shape)
        return jnp.asarray(values, leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


# LLVM optimisation only changes the CPU machine code, not the program; level 0
# makes these tiny models compile several times faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _apply(graphdef, state, x, positions, segment_ids, dropout_key):
    model = nnx.merge(graphdef, state)
    return model(x, positions=positions, segment_ids=segment_ids, dropout_key=dropout_key)


def run(model: DecoderLM, x, *, positions=None, segment_ids=None, dropout_key=None) -> np.ndarray:
    """model(x, ...) under jit, cached per architecture (eager calls re-trace the layer scan)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_apply(graphdef, state, x, positions, segment_ids, dropout_key))


def tokens(seed: int = 0, batch: int = BATCH, length: int = LENGTH) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), jnp.int32)


def pure_params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def load_params(model: nnx.Module, params: dict) -> None:
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def param_leaves(model: nnx.Module) -> dict[str, nnx.Variable]:
    flat = jax.tree_util.tree_flatten_with_path(
        nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {"/".join(str(k.key) for k in path): var for path, var in flat}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_shape_and_dtype(name):
    """Logits are float32 [batch, length, vocab] and finite; untied configs own an lm_head."""
    config = CONFIGS[name]()
    model = make(config)
    logits = run(model, tokens())
    assert logits.shape == (BATCH, LENGTH, VOCAB)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    params = pure_params(model)
    assert ("lm_head" in params) == (not config.tie_embeddings)
    assert ("pos_embed" in params) == (config.position_embedding == "learned")
    key_kernel = params["layers"]["attn"]["key"]["kernel"]
    assert key_kernel.shape == (2, 32, config.num_kv_heads, 8)


def stack_layers(unscanned: dict, num_layers: int) -> dict:
    """`layers/<i>/<name>` -> `layers/<name>` with a leading axis of size num_layers."""
    stacked = dict(unscanned)
    per_layer = [unscanned["layers"][i] for i in range(num_layers)]
    assert set(unscanned["layers"]) == set(range(num_layers))
    stacked["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    return stacked


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_scan_and_unscanned_layers_agree(name):
    """scan_layers=True with the unscanned weights stacked gives the same logits (1e-5)."""
    unscanned = make(CONFIGS[name](scan_layers=False), seed=0)
    scanned = make(CONFIGS[name](scan_layers=True), seed=1)  # different init, then overwritten
    x = tokens(3)
    before = run(scanned, x)
    load_params(scanned, stack_layers(pure_params(unscanned), 2))
    expected = run(unscanned, x)
    assert not np.allclose(before, expected, atol=1e-5)  # the weights really were replaced
    np.testing.assert_allclose(run(scanned, x), expected, atol=1e-5, rtol=1e-5)


def loss_and_grads(model: nnx.Module, x: jax.Array, targets: jax.Array):
    graphdef, params = nnx.split(model, nnx.Param)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def value_and_grads(params):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x)
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
        return jax.value_and_grad(loss_fn)(params)

    loss, grads = value_and_grads(params)
    return float(loss), nnx.to_pure_dict(grads)


@pytest.mark.parametrize("scan", [True, False])
def test_remat_policies_give_same_loss_and_grads(scan):
    """remat 'full' and 'dots' change memory, not maths: loss and grads equal 'none' (1e-5)."""
    x, targets = tokens(4), tokens(5)
    ref_loss, ref_grads = loss_and_grads(make(llama_tiny(scan_layers=scan)), x, targets)
    assert ref_loss > 0
    for policy in ("full", "dots"):
        loss, grads = loss_and_grads(make(llama_tiny(scan_layers=scan, remat_policy=policy)),
                                     x, targets)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                     grads, ref_grads)
        assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_causality(name):
    """Changing token t changes no logits before t, and does change the logits at t."""
    model = make(CONFIGS[name]())
    x = tokens(6)
    t = 7
    y = x.at[:, t].set((x[:, t] + 1) % VOCAB)
    a, b = run(model, x), run(model, y)
    np.testing.assert_allclose(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert np.abs(a[:, t] - b[:, t]).max() > 1e-4


@pytest.mark.parametrize("position_embedding", ["learned", "rope"])
def test_packed_documents_do_not_attend_across(position_embedding):
    """[docA | docB] with segment ids and restarting positions: docB's logits equal docB alone."""
    model = make(gpt2_tiny(position_embedding=position_embedding))
    len_a, len_b = 6, LENGTH - 6
    doc_a, doc_b = tokens(7, 1, len_a), tokens(8, 1, len_b)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    segments = jnp.asarray([[1] * len_a + [2] * len_b], jnp.int32)
    positions = jnp.asarray([list(range(len_a)) + list(range(len_b))], jnp.int32)

    packed_logits = run(model, packed, positions=positions, segment_ids=segments)
    np.testing.assert_allclose(packed_logits[:, len_a:], run(model, doc_b), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed_logits[:, :len_a], run(model, doc_a), atol=1e-5, rtol=1e-5)
    # Without the segment ids docB does see docA: the check above is not vacuous.
    leaky = run(model, packed, positions=positions)
    assert np.abs(leaky[:, len_a:] - run(model, doc_b)).max() > 1e-4


def test_dropout_keys():
    """Same key -> same output; different key -> different; no key -> equals a rate-0 model."""
    model = make(gpt2_tiny(dropout_rate=0.3))
    x = tokens(9)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(run(model, x, dropout_key=k1), run(model, x, dropout_key=k1))
    assert np.abs(run(model, x, dropout_key=k1) - run(model, x, dropout_key=k2)).max() > 1e-3

    plain = make(gpt2_tiny(dropout_rate=0.0), seed=5)
    load_params(plain, pure_params(model))
    no_key = run(model, x)
    np.testing.assert_array_equal(no_key, run(model, x))
    np.testing.assert_array_equal(no_key, run(plain, x))
    assert np.abs(run(model, x, dropout_key=k1) - no_key).max() > 1e-3


def test_bfloat16_compute_with_float32_params():
    """dtype=bfloat16 keeps float32 params and float32 logits close to the float32 model."""
    config = llama_tiny(dtype="bfloat16", param_dtype="float32")
    model = make(config)
    assert all(v.get_value().dtype == jnp.float32 for v in param_leaves(model).values())
    reference = make(llama_tiny())
    x = tokens(10)
    low, high = run(model, x), run(reference, x)
    assert low.dtype == np.float32 and np.isfinite(low).all()
    scale = np.abs(high).max()
    assert np.abs(low - high).max() < 0.05 * scale
    assert not np.array_equal(low, high)  # the compute really ran in bfloat16


def test_bfloat16_params_are_stored_in_bfloat16():
    """param_dtype=bfloat16 stores every parameter in bfloat16; logits are still float32."""
    model = make(gpt2_tiny(dtype="bfloat16", param_dtype="bfloat16"))
    assert all(v.get_value().dtype == jnp.bfloat16 for v in param_leaves(model).values())
    assert run(model, tokens()).dtype == jnp.float32


PARAM_AXES = {axes.EMBED, axes.HEADS, axes.KV_HEADS, axes.KV, axes.MLP, axes.VOCAB, axes.LAYERS,
              axes.POSITION}


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_every_parameter_has_logical_axes_of_its_rank(name, scan):
    """Each parameter is labelled with one known logical name per dimension; stacked ones lead with 'layers'."""
    model = nnx.eval_shape(lambda: make(CONFIGS[name](scan_layers=scan)))
    leaves = param_leaves(model)
    assert len(leaves) > 10
    for path, var in leaves.items():
        names = axes.logical_axes_of(var)
        assert len(names) == len(var.get_value().shape), path
        assert set(names) <= PARAM_AXES, (path, names)
        in_block = path.startswith("layers/")
        assert (names[0] == axes.LAYERS) == (in_block and scan), (path, names)
        assert names.count(axes.LAYERS) == (1 if in_block and scan else 0), (path, names)
    expected = {"token_embed/embedding": (axes.VOCAB, axes.EMBED)}
    prefix = "layers/" if scan else "layers/0/"
    stack = (axes.LAYERS,) if scan else ()
    expected[prefix + "attn/query/kernel"] = stack + (axes.EMBED, axes.HEADS, axes.KV)
    expected[prefix + "attn/key/kernel"] = stack + (axes.EMBED, axes.KV_HEADS, axes.KV)
    expected[prefix + "attn/out/kernel"] = stack + (axes.HEADS, axes.KV, axes.EMBED)
    for path, names in expected.items():
        assert axes.logical_axes_of(leaves[path]) == names, path


@pytest.mark.parametrize("overrides, field", [
    (dict(norm="batchnorm"), "norm"),
    (dict(position_embedding="alibi"), "position_embedding"),
    (dict(mlp_activation="tanh"), "mlp_activation"),
    (dict(remat_policy="some"), "remat_policy"),
    (dict(dtype="float64"), "dtype"),
    (dict(param_dtype="float16"), "param_dtype"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (dict(num_heads=4, num_kv_heads=0), "num_kv_heads"),
    (dict(embed_dim=30, num_heads=4), "num_heads"),
    (dict(embed_dim=12, num_heads=4, position_embedding="rope"), "head_dim"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(num_layers=0), "num_layers"),
])
def test_config_validation_names_the_field(overrides, field):
    """Each invalid choice raises UserError whose message names the offending field."""
    with pytest.raises(UserError, match=field):
        gpt2_tiny(**overrides)


def test_config_defaults_are_derived():
    """num_kv_heads, head_dim and mlp_dim default from num_heads and embed_dim."""
    config = gpt2_tiny()
    assert (config.num_kv_heads, config.head_dim, config.mlp_dim) == (4, 8, 128)
    assert gpt2_tiny(embed_dim=12, num_heads=4, position_embedding="learned").head_dim == 3
    assert gpt2_tiny(embed_dim=12, num_heads=4, head_dim=4, position_embedding="rope").head_dim == 4


HEAVY = ("tensorflow", "seqio", "gin", "optax", "orbax")


def test_models_import_is_light():
    """Importing llmos_jax.models and building/running a model loads no TF, seqio, gin or orbax,
    and no optax beyond what flax.nnx itself imports."""
    code = textwrap.dedent(f"""
        import json, sys
        heavy = {HEAVY!r}
        def loaded():
            return sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in sys.modules))
        from flax import nnx
        baseline = loaded()
        import llmos_jax.models
        from llmos_jax.models import DecoderLM, TransformerConfig
        config = TransformerConfig(vocab_size=8, num_layers=1, embed_dim=8, num_heads=2, max_len=4)
        import jax.numpy as jnp
        # Build and run the model abstractly: the same Python code paths, no XLA compiles.
        logits = nnx.eval_shape(
            lambda: DecoderLM(config, rngs=nnx.Rngs(0))(jnp.zeros((1, 4), jnp.int32)))
        assert logits.shape == (1, 4, 8), logits
        print(json.dumps({{"baseline": baseline, "after": loaded()}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for module in ("tensorflow", "seqio", "gin", "orbax"):
        assert module not in report["after"], report
    assert set(report["after"]) <= set(report["baseline"]), report
