"""LoRA on all three families: merge parity, adapter-only training, adapter files, bad input."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmos_jax.compression.adapters import (adapter_params, adapters_only, load_adapters,
                                            read_lora_config, save_adapters, trained_mask)
from llmos_jax.compression.lora import LoraConfig, LoraDense, apply_lora, merge_lora
from llmos_jax.errors import UserError
from llmos_jax.models import (DecoderLM, EncoderConfig, EncoderDecoderConfig, TransformerConfig)
from llmos_jax.models.encoder_decoder import EncoderDecoderLM
from llmos_jax.models.heads import EncoderForSequenceClassification
from llmos_jax.objectives import CausalLm
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.partitioning import DEFAULT_RULES, Layout, LogicalSharder, MeshConfig, build_mesh
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.train_state import init_train_state, state_shardings
from llmos_jax.training.train_step import StepConfig, jit_train_step, make_train_step

VOCAB, LENGTH = 32, 8
DECODER = TransformerConfig(vocab_size=VOCAB, num_layers=2, embed_dim=16, num_heads=2, mlp_dim=32,
                            max_len=LENGTH, scan_layers=True, dropout_rate=0.0)
BERT = EncoderConfig(vocab_size=VOCAB, num_layers=2, embed_dim=16, num_heads=2, max_len=LENGTH,
                     position_embedding="learned", norm="layernorm", use_bias=True,
                     mlp_activation="gelu_exact", dropout_rate=0.0, scan_layers=False)
T5 = EncoderDecoderConfig(vocab_size=VOCAB, num_layers=2, embed_dim=16, num_heads=2, head_dim=8,
                          mlp_dim=32, position_embedding="none", norm="rmsnorm",
                          mlp_activation="relu", use_bias=False, tie_embeddings=True,
                          dropout_rate=0.0, relative_buckets=8, relative_max_distance=16)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, VOCAB, (2, LENGTH)), jnp.int32)


def _randomise_adapters(model):
    """Non-zero `lora_b` (it starts at zero), so the adapters change the output."""
    for index, (_, node) in enumerate(nnx.iter_graph(model)):
        if isinstance(node, LoraDense):
            node.lora_b[...] = jax.random.normal(jax.random.key(index), node.lora_b.shape)


FAMILIES = {
    "decoder": (lambda: DecoderLM(DECODER, rngs=nnx.Rngs(0)), nnx.jit(lambda m: m(TOKENS))),
    "bert": (lambda: EncoderForSequenceClassification(BERT, 3, rngs=nnx.Rngs(0)),
             nnx.jit(lambda m: m(TOKENS))),
    "t5": (lambda: EncoderDecoderLM(T5, rngs=nnx.Rngs(0)), nnx.jit(lambda m: m(TOKENS, TOKENS))),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_merged_equals_unmerged_and_adapters_start_as_the_base(family):
    build, run = FAMILIES[family]
    model = build()
    base_out = run(model)
    adapted = apply_lora(model, LoraConfig(rank=2, alpha=4.0))
    assert any("attn" in p for p in adapted) and any("mlp" in p for p in adapted)
    np.testing.assert_allclose(run(model), base_out, atol=1e-6)  # lora_b starts at 0
    _randomise_adapters(model)
    unmerged = run(model)
    assert float(jnp.max(jnp.abs(unmerged - base_out))) > 1e-3
    assert merge_lora(model) == len(adapted)
    assert not adapter_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    np.testing.assert_allclose(run(model), unmerged, atol=1e-5)


def test_scale_is_alpha_over_rank():
    model = DecoderLM(dataclasses.replace(DECODER, scan_layers=False), rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(rank=4, alpha=2.0, target_patterns=["mlp/wo$"]))
    dense = model.layers[0].mlp.wo
    assert isinstance(dense, LoraDense) and dense.scale == 0.5
    dense.lora_b[...] = 0.1 * jnp.ones_like(dense.lora_b[...])
    x = jax.random.normal(jax.random.key(0), (3, DECODER.mlp_dim))
    a, b, k = dense.lora_a[...], dense.lora_b[...], dense.kernel[...]
    np.testing.assert_allclose(dense(x), x @ k + dense.bias[...] + 0.5 * (x @ a @ b), atol=1e-5)


def _lm_batch(rows=8):
    starts = np.random.default_rng(1).integers(1, VOCAB, (rows, 1))
    tokens = ((starts + np.arange(LENGTH + 1)) % VOCAB).astype(np.int32)  # next = this + 1
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": np.ones((rows, LENGTH), np.float32)}


def test_training_updates_only_adapters_which_hold_all_optimizer_state():
    mesh = build_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    layout = Layout(mesh, DEFAULT_RULES)
    config = LoraConfig(rank=8, alpha=8.0)

    def build(rngs):
        # A large init: logits of the frozen tied embedding can then move far.
        model = CausalLm().build_model(dataclasses.replace(DECODER, init_std=0.5), rngs=rngs, shard=LogicalSharder(mesh, DEFAULT_RULES))
        apply_lora(model, config)
        return model

    spec = model_spec(build, seed=0)
    tx = adapters_only(make_optimizer(name="adamw", learning_rate=1e-1, weight_decay=0.0))
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    adapter_shapes = sorted(tuple(x.shape) for x in adapter_params(state.params).values())
    opt_shapes = [tuple(x.shape) for x in jax.tree.leaves(state.opt_state) if jnp.ndim(x) > 0]
    # AdamW keeps mu and nu per trainable array; the base holds no optimizer arrays.
    assert sorted(opt_shapes) == sorted(adapter_shapes * 2)
    base_before = jax.device_get(state.params)  # copied before the step donates it
    batch = _lm_batch()
    step = jit_train_step(make_train_step(
        spec, tx, lambda s: current_learning_rate(s.inner_states["adapter"].inner_state),
        StepConfig(use_dropout=False), layout), shardings, {k: 2 for k in batch}, layout)
    device_batch = layout.global_batch(batch)
    losses = []
    for _ in range(30):
        state, metrics = step(state, device_batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses  # the adapters alone fit the fixed batch
    after = jax.device_get(state.params)
    flat_before = _flat(base_before)
    flat_after = _flat(after)
    for path, value in flat_before.items():
        if path.endswith(("lora_a", "lora_b")):
            continue
        np.testing.assert_array_equal(flat_after[path], value, err_msg=path)
    assert not np.allclose(flat_after["layers/mlp/wo/lora_b"], 0.0)


def _flat(params):
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_adapter_only_files_round_trip_and_refuse_a_different_base(tmp_path):
    config = LoraConfig(rank=2, alpha=4.0, target_patterns=[r"attn/(query|value)$"])
    model = DecoderLM(DECODER, rngs=nnx.Rngs(0))
    apply_lora(model, config)
    _randomise_adapters(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    size = save_adapters(tmp_path / "a", params, config)
    adapters = adapter_params(params)
    assert size == sum(np.asarray(v).nbytes for v in adapters.values())
    assert (tmp_path / "a" / "adapters.safetensors").stat().st_size < size + 4096
    assert read_lora_config(tmp_path / "a") == config

    fresh = DecoderLM(DECODER, rngs=nnx.Rngs(0))
    apply_lora(fresh, read_lora_config(tmp_path / "a"))
    fresh_params = nnx.to_pure_dict(nnx.state(fresh, nnx.Param))
    loaded = load_adapters(tmp_path / "a", fresh_params)
    nnx.update(fresh, loaded)
    run = nnx.jit(lambda m: m(TOKENS))
    np.testing.assert_allclose(run(fresh), run(model), atol=1e-6)

    wider = DecoderLM(dataclasses.replace(DECODER, embed_dim=32), rngs=nnx.Rngs(0))
    apply_lora(wider, config)
    with pytest.raises(UserError, match=r"'layers/attn/query/lora_a'.*different base"):
        load_adapters(tmp_path / "a", nnx.to_pure_dict(nnx.state(wider, nnx.Param)))


def test_a_target_pattern_that_matches_nothing_is_named_with_real_paths():
    model = DecoderLM(DECODER, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match=r"'q_proj' matches no dense layer.*layers/attn/"):
        apply_lora(model, LoraConfig(target_patterns=["q_proj"]))


def _decoder_lora_step(config, *, trained, microbatches=1):
    """A 1-device LoRA train step on the decoder: (state, jitted step, batch) ."""
    layout = Layout(build_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1]),
                    DEFAULT_RULES)

    def build(rngs):
        model = CausalLm().build_model(dataclasses.replace(DECODER, init_std=0.5), rngs=rngs,
                                       shard=layout.activation_sharder)
        apply_lora(model, config)
        return model

    spec = model_spec(build, seed=0)
    tx = adapters_only(make_optimizer(name="adamw", learning_rate=1e-1, weight_decay=0.0),
                       config.also_train)
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    batch = _lm_batch()
    mask = (lambda p: trained_mask(p, config.also_train)) if trained else None
    step = jit_train_step(make_train_step(
        spec, tx, lambda s: current_learning_rate(s.inner_states["adapter"].inner_state),
        StepConfig(use_dropout=False, microbatches=microbatches), layout, trained=mask),
        shardings, {k: 2 for k in batch}, layout)
    return state, step, layout.global_batch(batch)


def test_also_train_parameters_train_in_full_and_save_with_the_adapters(tmp_path):
    config = LoraConfig(rank=4, alpha=8.0, also_train=[r"^final_norm/"])
    state, step, batch = _decoder_lora_step(config, trained=True)
    trained_shapes = sorted(tuple(x.shape) for x in adapter_params(
        state.params, config.also_train).values())
    assert (DECODER.embed_dim,) in trained_shapes  # the final norm's scale
    opt_shapes = [tuple(x.shape) for x in jax.tree.leaves(state.opt_state) if jnp.ndim(x) > 0]
    assert sorted(opt_shapes) == sorted(trained_shapes * 2)
    before = _flat(jax.device_get(state.params))
    for _ in range(3):
        state, _ = step(state, batch)
    after = _flat(jax.device_get(state.params))
    assert not np.allclose(after["final_norm/scale"], before["final_norm/scale"])
    np.testing.assert_array_equal(after["layers/mlp/wo/kernel"], before["layers/mlp/wo/kernel"])

    params = jax.device_get(state.params)
    save_adapters(tmp_path / "a", params, config)
    assert read_lora_config(tmp_path / "a") == config
    fresh = DecoderLM(dataclasses.replace(DECODER, init_std=0.5), rngs=nnx.Rngs(1))
    apply_lora(fresh, config)
    loaded = _flat(load_adapters(tmp_path / "a", nnx.to_pure_dict(nnx.state(fresh, nnx.Param))))
    np.testing.assert_array_equal(loaded["final_norm/scale"], after["final_norm/scale"])
    np.testing.assert_array_equal(loaded["layers/attn/query/lora_b"],
                                  after["layers/attn/query/lora_b"])


def test_frozen_weights_get_no_gradient_computation_and_the_same_update():
    config = LoraConfig(rank=4, alpha=8.0)
    results, flops = {}, {}
    for trained in (False, True):
        state, step, batch = _decoder_lora_step(config, trained=trained)
        flops[trained] = step.lower(state, batch).compile().cost_analysis()["flops"]
        state, metrics = step(state, batch)
        results[trained] = (_flat(jax.device_get(state.params)), float(metrics["grad_norm"]))
    # stop_gradient on the frozen base: the same update, with the base's weight-gradient
    # matmuls gone from the compiled step; grad_norm now counts only what trains (and is
    # clipped), not the frozen weights' unused gradients.
    for path, value in results[False][0].items():
        np.testing.assert_allclose(results[True][0][path], value, rtol=1e-5, atol=1e-6,
                                   err_msg=path)
    assert 0 < results[True][1] < results[False][1]
    assert flops[True] < 0.85 * flops[False], flops


def _scan_carry_elements(step, state, batch) -> int:
    """Elements carried by the largest `scan` in the step's jaxpr (the microbatch loop)."""
    counts = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                first = eqn.params["num_consts"]
                carry = eqn.invars[first:first + eqn.params["num_carry"]]
                counts.append(sum(int(np.prod(v.aval.shape)) for v in carry))
            for value in eqn.params.values():  # pjit, scan, remat, custom_vjp bodies
                inner = getattr(value, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jax.make_jaxpr(step)(state, batch).jaxpr)
    return max(counts)


def test_gradient_accumulation_carries_only_what_trains():
    config = LoraConfig(rank=4, alpha=8.0, also_train=[r"^final_norm/"])
    state, whole, batch = _decoder_lora_step(config, trained=True)
    after_whole = _flat(jax.device_get(whole(state, batch)[0].params))
    state, split, batch = _decoder_lora_step(config, trained=True, microbatches=2)
    carried = _scan_carry_elements(split, state, batch)
    after_split = _flat(jax.device_get(split(state, batch)[0].params))
    trained_elements = sum(x.size for x in adapter_params(state.params,
                                                          config.also_train).values())
    total_elements = sum(x.size for x in jax.tree.leaves(state.params))
    # The accumulator holds the adapters and the final norm (plus the loss sums and one
    # scalar per frozen tensor), not a float32 copy of the frozen base.
    assert trained_elements <= carried < trained_elements + 200 < total_elements
    for path, value in after_whole.items():  # two microbatches: the same update
        np.testing.assert_allclose(after_split[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def test_an_also_train_pattern_that_matches_nothing_is_named():
    model = DecoderLM(DECODER, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match=r"LoraConfig.also_train entry '\^classifier/' matches "
                                        r"no parameter.*final_norm"):
        apply_lora(model, LoraConfig(also_train=["^classifier/"]))


def test_adapter_files_must_hold_exactly_the_also_train_tensors(tmp_path):
    config = LoraConfig(rank=2, alpha=4.0, also_train=[r"^final_norm/"])
    model = DecoderLM(DECODER, rngs=nnx.Rngs(0))
    apply_lora(model, config)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    save_adapters(tmp_path / "with_head", params, config)
    plain = LoraConfig(rank=2, alpha=4.0)
    save_adapters(tmp_path / "adapters_only", params, plain)
    # A folder whose config trains the final norm but whose file lacks it (or the reverse)
    # is refused, naming the tensor, instead of silently keeping a fresh or stale weight.
    (tmp_path / "adapters_only" / "lora_config.json").write_text(
        (tmp_path / "with_head" / "lora_config.json").read_text())
    with pytest.raises(UserError, match=r"lacks adapter tensor 'final_norm/(bias|scale)'"):
        load_adapters(tmp_path / "adapters_only", params)
    (tmp_path / "with_head" / "lora_config.json").write_text(
        json.dumps({**json.loads((tmp_path / "with_head" / "lora_config.json").read_text()),
                    "also_train": []}))
    with pytest.raises(UserError, match=r"holds adapter tensor 'final_norm/(bias|scale)'"):
        load_adapters(tmp_path / "with_head", params)
