"""Model definitions. Importable without gin, seqio or TensorFlow."""

from llmos_jax.models.config import TransformerConfig, gpt2_config, llama_style_config
from llmos_jax.models.decoder import DecoderBlock, DecoderLM
from llmos_jax.models.encoder import Encoder, EncoderConfig, bert_config
from llmos_jax.models.encoder_block import EncoderBlock
from llmos_jax.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM, t5_config
from llmos_jax.models.heads import (EncoderForPreTraining, EncoderForSequenceClassification,
                                    EncoderForTokenClassification)

__all__ = [
    "TransformerConfig", "DecoderLM", "DecoderBlock", "gpt2_config", "llama_style_config",
    "Encoder", "EncoderBlock", "EncoderConfig", "bert_config", "EncoderForPreTraining",
    "EncoderForSequenceClassification", "EncoderForTokenClassification",
    "EncoderDecoderConfig", "EncoderDecoderLM", "t5_config",
]
