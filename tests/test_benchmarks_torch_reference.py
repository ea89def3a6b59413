"""The PyTorch reference of benchmarks/ computes what llmos_jax computes.

`benchmarks/torch_shakespeare.py` is the evidence for the Shakespeare result
(experiments/shakespeare_char/RESULTS.md), so its model, schedule and
weight-decay groups must be nanoGPT's and ours: same logits for the same
weights, the same learning rate at every step, the same decayed tensors.
"""

import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from torch_gpt import TorchGPT, TorchGPTConfig, make_adamw  # noqa: E402
from torch_shakespeare import get_lr  # noqa: E402

from llmos_jax.models import DecoderLM, TransformerConfig  # noqa: E402
from llmos_jax.training.schedules import warmup_then_decay  # noqa: E402
from llmos_jax.training.weight_decay import describe_mask  # noqa: E402

LAYERS, HEADS, WIDTH, CONTEXT, VOCAB = 2, 2, 16, 8, 11


def _torch_to_jax_params(model: TorchGPT) -> dict:
    """Our stacked-layer parameter dict holding the torch model's weights."""
    def t(x):  # a copy: torch updates its parameters in place
        return x.detach().numpy().copy()

    head_dim = WIDTH // HEADS
    blocks = model.blocks
    q, k, v = zip(*(np.split(t(b.attn.c_attn.weight), 3, axis=0) for b in blocks))
    heads_in = lambda w: w.T.reshape(WIDTH, HEADS, head_dim)  # noqa: E731  [out, in] -> [in, h, d]
    params = {
        "token_embed": {"embedding": t(model.wte.weight)},
        "final_norm": {"scale": t(model.ln_f.weight)},
        "layers": {
            "attn_norm": {"scale": np.stack([t(b.ln_1.weight) for b in blocks])},
            "mlp_norm": {"scale": np.stack([t(b.ln_2.weight) for b in blocks])},
            "attn": {
                "query": {"kernel": np.stack([heads_in(w) for w in q])},
                "key": {"kernel": np.stack([heads_in(w) for w in k])},
                "value": {"kernel": np.stack([heads_in(w) for w in v])},
                "out": {"kernel": np.stack([t(b.attn.c_proj.weight).T.reshape(
                    HEADS, head_dim, WIDTH) for b in blocks])},
            },
            "mlp": {"wi": {"kernel": np.stack([t(b.c_fc.weight).T for b in blocks])},
                    "wo": {"kernel": np.stack([t(b.c_proj.weight).T for b in blocks])}},
        },
    }
    if model.wpe is not None:
        params["pos_embed"] = {"embedding": t(model.wpe.weight)}
    return params


@pytest.mark.parametrize("position_embedding", ["learned", "rope"])
def test_nanogpt_style_torch_model_gives_our_logits_for_the_same_weights(position_embedding):
    torch.manual_seed(0)
    reference = TorchGPT(TorchGPTConfig(VOCAB, LAYERS, HEADS, WIDTH, CONTEXT, bias=False,
                                        gelu_approximate="none",
                                        position_embedding=position_embedding))
    # Weights large enough that activations are O(1) (so e.g. tanh vs exact GELU
    # shows), and non-trivial norm scales, so a swapped or dropped norm would show.
    with torch.no_grad():
        for p in reference.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    config = TransformerConfig(vocab_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                               embed_dim=WIDTH, max_len=CONTEXT, use_bias=False,
                               mlp_activation="gelu_exact", tie_embeddings=True,
                               position_embedding=position_embedding)
    graphdef, state = nnx.split(DecoderLM(config, rngs=nnx.Rngs(0)), nnx.Param)
    ours = _torch_to_jax_params(reference)
    assert jax.tree.map(np.shape, nnx.to_pure_dict(state)) == jax.tree.map(np.shape, ours)
    nnx.replace_by_pure_dict(state, ours)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (3, CONTEXT))
    expected = reference(torch.from_numpy(tokens)).detach().numpy()
    actual = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


def test_nanogpt_get_lr_equals_warmup_then_decay_at_every_step():
    ours = warmup_then_decay(peak_learning_rate=1e-3, warmup_steps=100, decay_steps=2000,
                             end_learning_rate=1e-4)
    steps = np.arange(0, 2101)
    expected = [get_lr(int(s), learning_rate=1e-3, warmup_iters=100, lr_decay_iters=2000,
                       min_lr=1e-4) for s in steps]
    np.testing.assert_allclose(np.asarray(jax.vmap(ours)(steps)), expected, rtol=2e-6)
    assert get_lr(0, learning_rate=1e-3, warmup_iters=100, lr_decay_iters=2000, min_lr=1e-4,
                  warmup_from_zero=True) == 0.0


def _decayed_and_kept_sizes(optimizer) -> tuple[int, int]:
    sizes = {True: 0, False: 0}
    for group in optimizer.param_groups:
        sizes[group["weight_decay"] > 0] += sum(p.numel() for p in group["params"])
    return sizes[True], sizes[False]


def test_torch_decay_groups_cover_the_same_weights_as_our_default_mask():
    torch.manual_seed(0)
    reference = TorchGPT(TorchGPTConfig(VOCAB, LAYERS, HEADS, WIDTH, CONTEXT, bias=False))
    config = TransformerConfig(vocab_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                               embed_dim=WIDTH, max_len=CONTEXT, use_bias=False)
    state = nnx.to_pure_dict(nnx.state(DecoderLM(config, rngs=nnx.Rngs(0)), nnx.Param))
    decayed, excluded = describe_mask(state)
    assert {"token_embed/embedding", "pos_embed/embedding"} <= set(decayed)
    assert all(path.endswith("/scale") for path in excluded)
    sizes = {"/".join(str(k.key) for k in path): leaf.size
             for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    ours = (sum(sizes[p] for p in decayed), sum(sizes[p] for p in excluded))

    kwargs = dict(learning_rate=1e-3, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1)
    assert _decayed_and_kept_sizes(make_adamw(reference, **kwargs)) == ours
    embeddings = (VOCAB + CONTEXT) * WIDTH
    assert _decayed_and_kept_sizes(make_adamw(reference, decay_embeddings=False, **kwargs)) == (
        ours[0] - embeddings, ours[1] + embeddings)


def test_three_clipped_adamw_steps_match_the_torch_reference():
    """Same weights and batches: the torch step and ours end at the same parameters."""
    import optax

    from llmos_jax.objectives.loss import cross_entropy_sums
    from llmos_jax.training.optimizers import make_optimizer

    torch.manual_seed(0)
    reference = TorchGPT(TorchGPTConfig(VOCAB, LAYERS, HEADS, WIDTH, CONTEXT, bias=False,
                                        gelu_approximate="none"))
    config = TransformerConfig(vocab_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                               embed_dim=WIDTH, max_len=CONTEXT, use_bias=False,
                               mlp_activation="gelu_exact", tie_embeddings=True)
    graphdef, state = nnx.split(DecoderLM(config, rngs=nnx.Rngs(0)), nnx.Param)
    params = jax.tree.map(np.asarray, _torch_to_jax_params(reference))
    initial = params
    # A large rate and a small clip, so that decay, clipping and the Adam step all matter.
    schedule = warmup_then_decay(peak_learning_rate=3e-2, warmup_steps=1, decay_steps=4,
                                 end_learning_rate=3e-3)
    tx = make_optimizer(name="adamw", learning_rate=schedule, b1=0.9, b2=0.99, eps=1e-8,
                        weight_decay=0.1, grad_clip_norm=0.5)
    opt_state = tx.init(params)
    torch_opt = make_adamw(reference, learning_rate=0.0, b1=0.9, b2=0.99, eps=1e-8,
                           weight_decay=0.1)

    def loss_fn(p, x, y):
        sums = cross_entropy_sums(nnx.merge(graphdef, p)(x), y, np.ones(y.shape, np.float32))
        return sums["loss"] / sums["weight"]

    @jax.jit
    def our_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(1)
    for step in range(3):
        windows = rng.integers(0, VOCAB, (4, CONTEXT + 1))
        x, y = windows[:, :-1], windows[:, 1:]
        params, opt_state, our_loss = our_step(params, opt_state, x, y)

        for group in torch_opt.param_groups:
            group["lr"] = get_lr(step, learning_rate=3e-2, warmup_iters=1, lr_decay_iters=4,
                                 min_lr=3e-3)
        logits = reference(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                 torch.from_numpy(y).reshape(-1))
        torch_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        torch_opt.step()
        np.testing.assert_allclose(float(our_loss), loss.item(), rtol=1e-5)

    expected = _torch_to_jax_params(reference)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=3e-5, rtol=1e-3),
                 params, expected)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), params, initial)
    assert max(jax.tree.leaves(moved)) > 1e-2  # the steps did move the weights
