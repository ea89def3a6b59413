"""The position-wise MLP: plain (GELU/ReLU/SiLU) or gated (SwiGLU/GeGLU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmos_jax.models import axes
from llmos_jax.models.dense import Dense, DenseFactory
from llmos_jax.models.dropout import dropout, split_key

# Name -> elementwise function; also used by the masked-LM head's transform.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swiglu": jax.nn.silu,
    "geglu": lambda x: jax.nn.gelu(x, approximate=True),
}


class Mlp(nnx.Module):
    """`wo(act(wi(x)))`, or `wo(act(wi_gate(x)) * wi_up(x))` when gated.

    `dense` builds the projections (`llmos_jax.models.builders` chooses it).
    """

    def __init__(self, embed_dim: int, mlp_dim: int, *, activation: str, gated: bool,
                 use_bias: bool, init_std: float, out_init_std: float,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs, dense: DenseFactory = Dense):
        self.activation = activation
        common = dict(use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
        if gated:
            self.wi_gate = dense((embed_dim,), (mlp_dim,), (axes.EMBED,), (axes.MLP,),
                                 init_std=init_std, **common)
            self.wi_up = dense((embed_dim,), (mlp_dim,), (axes.EMBED,), (axes.MLP,),
                               init_std=init_std, **common)
            self.wi = None
        else:
            self.wi = dense((embed_dim,), (mlp_dim,), (axes.EMBED,), (axes.MLP,),
                            init_std=init_std, **common)
            self.wi_gate = self.wi_up = None
        self.wo = dense((mlp_dim,), (embed_dim,), (axes.MLP,), (axes.EMBED,),
                        init_std=out_init_std, **common)

    def __call__(self, x: jax.Array, *, shard: axes.ActivationSharder,
                 dropout_rate: float = 0.0, dropout_key: jax.Array | None = None,
                 hidden_dropout_rate: float = 0.0) -> jax.Array:
        """Dropout (with a key) hits the output at `dropout_rate`, and the hidden
        activations too at `hidden_dropout_rate` (T5) when that is above 0."""
        act = ACTIVATIONS[self.activation]
        hidden_key = None
        if hidden_dropout_rate > 0.0 and dropout_key is not None:
            hidden_key, dropout_key = split_key(dropout_key, 2)
        if self.wi is not None:
            h = act(self.wi(x))
        else:
            h = act(self.wi_gate(x)) * self.wi_up(x)
        h = shard(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        h = dropout(h, hidden_dropout_rate, hidden_key)
        # Residual dropout on the block output, as in GPT-2/nanoGPT and Hugging Face.
        return dropout(self.wo(h), dropout_rate, dropout_key)
