"""Every family's layer stack is built and run by the shared `layer_stack` code.

The decoder, the encoder and both T5 stacks must get the same `scan_layers`,
scan `unroll` and `remat_policy` treatment: these tests read it off the traced
program (the scan's trip count and unroll, the remat policy around each
block, the while loops left after lowering), not off the Python calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmos_jax.models import DecoderLM, TransformerConfig, layer_stack
from llmos_jax.models.encoder import Encoder, bert_config
from llmos_jax.models.encoder_decoder import EncoderDecoderLM, t5_config

TOKENS = jnp.array(np.random.RandomState(0).randint(1, 32, (2, 6)), jnp.int32)
DROPOUT_KEY = jax.random.PRNGKey(7)


def decoder(**fields):
    config = TransformerConfig(vocab_size=32, num_layers=3, embed_dim=16, num_heads=2,
                               max_len=8, dropout_rate=0.1, **fields)
    return DecoderLM(config, rngs=nnx.Rngs(0)), lambda m: m(TOKENS, dropout_key=DROPOUT_KEY)


def encoder(**fields):
    config = bert_config(vocab_size=32, num_layers=3, embed_dim=16, num_heads=2, max_len=8,
                         **fields)
    return Encoder(config, rngs=nnx.Rngs(0)), lambda m: m(TOKENS, dropout_key=DROPOUT_KEY)


def t5(**fields):
    config = t5_config("1.1", vocab_size=32, num_layers=2, num_decoder_layers=3, embed_dim=16,
                       num_heads=2, head_dim=8, mlp_dim=32, **fields)
    return (EncoderDecoderLM(config, rngs=nnx.Rngs(0)),
            lambda m: m(TOKENS, TOKENS[:, :4], dropout_key=DROPOUT_KEY))


# family -> (builder, depth of each of its stacks, in the order they run)
FAMILIES = {"decoder": (decoder, (3,)), "encoder": (encoder, (3,)), "t5": (t5, (2, 3))}


def traced(model, run):
    """The jaxpr of `run(model)` as a function of the model's state."""
    graphdef, state = nnx.split(model)
    return jax.make_jaxpr(lambda s: run(nnx.merge(graphdef, s)))(state).jaxpr


def sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def equations(jaxpr, name):
    """Every equation of primitive `name`, outermost first, searching nested jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            found.append(eqn)
        for sub in sub_jaxprs(eqn):
            found.extend(equations(sub, name))
    return found


def remat_policies(jaxpr):
    return [eqn.params["policy"] for eqn in equations(jaxpr, "remat2")]


def layer_scans(jaxpr):
    """(trip count, unroll, remat policy of the body or None) of each scan."""
    scans = []
    for eqn in equations(jaxpr, "scan"):
        body = eqn.params["jaxpr"].jaxpr
        policies = [e.params["policy"] for e in body.eqns if e.primitive.name == "remat2"]
        scans.append((eqn.params["length"], eqn.params["unroll"], policies[0] if policies else None))
    return scans


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("remat_policy", ["none", "dots", "full"])
def test_each_stacked_family_scans_with_the_shared_unroll_and_remat(family, remat_policy):
    build, depths = FAMILIES[family]
    model, run = build(scan_layers=True, remat_policy=remat_policy)
    policy = layer_stack.REMAT_POLICIES.get(remat_policy)
    expected = [(depth, layer_stack.layer_scan_unroll(depth), policy) for depth in depths]
    assert layer_scans(traced(model, run)) == expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_unstacked_family_remats_every_block_without_a_scan(family):
    build, depths = FAMILIES[family]
    model, run = build(scan_layers=False, remat_policy="dots")
    jaxpr = traced(model, run)
    assert equations(jaxpr, "scan") == []
    assert remat_policies(jaxpr) == [layer_stack.REMAT_POLICIES["dots"]] * sum(depths)


def while_loops(model, run) -> int:
    graphdef, state = nnx.split(model)
    lowered = jax.jit(lambda s: run(nnx.merge(graphdef, s))).lower(state)
    return lowered.as_text().count("stablehlo.while")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the stack is unrolled on CPU only")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_on_cpu_every_family_stack_lowers_to_straight_line_code(family, monkeypatch):
    build, depths = FAMILIES[family]
    model, run = build(scan_layers=True, remat_policy="none")
    unrolled = while_loops(model, run)  # any left come from elsewhere (random bits)
    monkeypatch.setattr(layer_stack, "layer_scan_unroll", lambda num_layers: 1)
    assert while_loops(model, run) == unrolled + len(depths)  # one rolled loop per stack


def outputs_and_grads(model, run):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        out = run(nnx.merge(graphdef, p, rest))
        return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, nnx.to_pure_dict(grads)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unrolling_the_stack_changes_no_output_or_gradient(family, monkeypatch):
    build, depths = FAMILIES[family]
    model, run = build(scan_layers=True, remat_policy="full")
    monkeypatch.setattr(layer_stack, "layer_scan_unroll", lambda num_layers: num_layers)
    assert [unroll for _, unroll, _ in layer_scans(traced(model, run))] == list(depths)
    unrolled = outputs_and_grads(model, run)
    monkeypatch.setattr(layer_stack, "layer_scan_unroll", lambda num_layers: 1)
    assert [unroll for _, unroll, _ in layer_scans(traced(model, run))] == [1] * len(depths)
    rolled = outputs_and_grads(model, run)
    # Dropout is on (a key is passed), so this also checks each layer's key. Summation order
    # differs between the two programs, so small entries are held to float32 rounding of the
    # tensor's largest entry (a wrong key or layer would be off by far more).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b).max()))), unrolled, rolled)
