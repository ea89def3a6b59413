"""The two training steps `compare_train_speed.py` times, built once for every benchmark.

`build_jax` is the framework's real step (`DecoderLM`, `make_optimizer`,
`make_train_step` / `jit_train_step` on a 1-device mesh with donation); `build_torch`
the eager PyTorch reference of `torch_gpt.py`, with the same parameter count and FLOPs.
`SETUPS` are nanoGPT's two shakespeare_char shapes.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    num_layers: int
    num_heads: int
    embed_dim: int
    context: int
    batch: int
    vocab: int = 65
    # nanoGPT's shakespeare_char optimizer settings.
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0


SETUPS = {
    # nanoGPT shakespeare_char "CPU" settings, dropout 0.
    "small": Setup("small", num_layers=4, num_heads=4, embed_dim=128, context=64, batch=12),
    # nanoGPT shakespeare_char GPU model at batch 16, dropout 0.
    "large": Setup("large", num_layers=6, num_heads=6, embed_dim=384, context=256, batch=16),
}


def build_jax(setup: Setup, jax_overrides: dict, *, donate: bool = True, dropout: float = 0.0):
    """The llmos_jax train step for `setup`, through the framework's own builders.

    `donate=False` jits the same step without donating the old state (an
    ablation; the framework always donates).

    Returns (config, number of parameters, step function, holder of the state).
    """
    import jax
    import numpy as np

    from llmos_jax.models import DecoderLM, TransformerConfig
    from llmos_jax.partitioning import DEFAULT_RULES, MeshConfig, build_mesh
    from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
    from llmos_jax.training.train_state import init_train_state, state_shardings
    from llmos_jax.training.train_step import (INPUTS, TARGETS, WEIGHTS, StepConfig,
                                               jit_train_step, make_train_step)
    try:
        from llmos_jax.objectives.model_building import model_spec
        from llmos_jax.partitioning import Layout
    except ImportError:  # `--jax_pythonpath` at a tree from before the Layout object.
        from llmos_jax.training.train_state import model_spec
        from pre_layout import PreLayout  # a sibling module: benchmarks/ is on sys.path
        Layout = PreLayout.wrap(state_shardings, make_train_step, jit_train_step)
        state_shardings, make_train_step, jit_train_step = Layout.functions()

    fields = dict(
        vocab_size=setup.vocab, num_layers=setup.num_layers, embed_dim=setup.embed_dim,
        num_heads=setup.num_heads, max_len=setup.context, position_embedding="learned",
        norm="layernorm", norm_eps=1e-5, mlp_activation="gelu", use_bias=True,
        tie_embeddings=True, dropout_rate=dropout, dtype="float32", param_dtype="float32")
    fields.update(jax_overrides)
    config = TransformerConfig(**fields)
    mesh = build_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    layout = Layout(mesh, DEFAULT_RULES)
    spec = model_spec(lambda rngs: DecoderLM(config, rngs=rngs, shard=layout.activation_sharder),
                      0)
    tx = make_optimizer(name="adamw", learning_rate=setup.learning_rate, b1=setup.b1,
                        b2=setup.b2, eps=setup.eps, weight_decay=setup.weight_decay,
                        grad_clip_norm=setup.grad_clip)
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    train_step = make_train_step(spec, tx, current_learning_rate,
                                 StepConfig(use_dropout=config.dropout_rate > 0), layout)
    step_fn = jit_train_step(train_step, shardings, [INPUTS, TARGETS, WEIGHTS], layout)
    if not donate:
        step_fn = jax.jit(
            train_step,
            in_shardings=(shardings, layout.batch_shardings([INPUTS, TARGETS, WEIGHTS])),
            out_shardings=(shardings, layout.replicated))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, setup.vocab, (setup.batch, setup.context + 1), dtype=np.int32)
    batch = layout.global_batch(
        {INPUTS: tokens[:, :-1], TARGETS: tokens[:, 1:],
         WEIGHTS: np.ones((setup.batch, setup.context), np.float32)})
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))
        return metrics

    return config, num_params, step, holder


def build_torch(setup: Setup, attention: str = "sdpa", adamw: str = "foreach",
                dropout: float = 0.0):
    """The PyTorch reference step for `setup`: (number of parameters, step function)."""
    import numpy as np
    import torch

    from torch_gpt import TorchGPT, TorchGPTConfig, make_adamw, make_train_step

    torch.manual_seed(0)
    model = TorchGPT(TorchGPTConfig(vocab_size=setup.vocab, num_layers=setup.num_layers,
                                    num_heads=setup.num_heads, embed_dim=setup.embed_dim,
                                    max_len=setup.context, attention=attention,
                                    dropout=dropout))
    optimizer = make_adamw(model, learning_rate=setup.learning_rate, b1=setup.b1, b2=setup.b2,
                           eps=setup.eps, weight_decay=setup.weight_decay, implementation=adamw)
    train_step = make_train_step(model, optimizer, setup.grad_clip)
    rng = np.random.default_rng(0)
    tokens = torch.from_numpy(
        rng.integers(0, setup.vocab, (setup.batch, setup.context + 1)).astype(np.int64))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        return train_step(inputs, targets)

    return model.num_params(), step


def flops_per_token(setup: Setup) -> float:
    from llmos_jax.models.flops import decoder_training_flops_per_token

    head_dim = setup.embed_dim // setup.num_heads
    return decoder_training_flops_per_token(
        num_layers=setup.num_layers, embed_dim=setup.embed_dim, num_heads=setup.num_heads,
        num_kv_heads=setup.num_heads, head_dim=head_dim, mlp_dim=4 * setup.embed_dim,
        vocab_size=setup.vocab, seq_len=setup.context, gated_mlp=False)
