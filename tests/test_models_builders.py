"""Every projection of every family is built through `builders.dense_layer`.

That is the one place where adapters or quantized kernels will plug in, so a
projection built around it would silently miss them.
"""

from __future__ import annotations

from flax import nnx

from llmos_jax.models import DecoderLM, TransformerConfig, builders
from llmos_jax.models.dense import Dense
from llmos_jax.models.encoder import bert_config
from llmos_jax.models.encoder_decoder import EncoderDecoderLM, t5_config
from llmos_jax.models.heads import (EncoderForPreTraining, EncoderForSequenceClassification,
                                    EncoderForTokenClassification)


class MarkedDense(Dense):
    """A `Dense` that records it was built through `builders.dense_layer`."""


def models():
    rngs = nnx.Rngs(0)
    # Unstacked, so each block's projections are separate modules to inspect.
    small = dict(vocab_size=32, num_layers=2, embed_dim=16, num_heads=2, max_len=8,
                 scan_layers=False)
    bert = bert_config(**small)
    t5_small = {**small, "head_dim": 8, "mlp_dim": 32}
    del t5_small["max_len"]
    return {
        "gpt2": DecoderLM(TransformerConfig(**small), rngs=rngs),
        "untied decoder": DecoderLM(TransformerConfig(**small, tie_embeddings=False,
                                                      mlp_activation="swiglu"), rngs=rngs),
        "bert pre-training": EncoderForPreTraining(bert, rngs=rngs),
        "bert sequence": EncoderForSequenceClassification(bert, 3, rngs=rngs),
        "bert token": EncoderForTokenClassification(bert, 3, rngs=rngs),
        "t5 v1.0": EncoderDecoderLM(t5_config("1.0", **t5_small), rngs=rngs),
        "t5 v1.1": EncoderDecoderLM(t5_config("1.1", **t5_small), rngs=rngs),
    }


def test_every_projection_of_every_family_comes_from_dense_layer(monkeypatch):
    monkeypatch.setattr(builders, "dense_layer", lambda config: MarkedDense)
    for name, model in models().items():
        projections = [(path, node) for path, node in nnx.iter_graph(model)
                       if isinstance(node, Dense)]
        assert projections, name
        stray = ["/".join(map(str, path)) for path, node in projections
                 if not isinstance(node, MarkedDense)]
        assert stray == [], f"{name}: built around builders.dense_layer: {stray}"
