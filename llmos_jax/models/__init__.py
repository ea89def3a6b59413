"""Model definitions. Importable without gin, seqio or TensorFlow."""

from llmos_jax.models.config import TransformerConfig, gpt2_config, llama_style_config
from llmos_jax.models.decoder import DecoderBlock, DecoderLM

__all__ = ["TransformerConfig", "DecoderLM", "DecoderBlock", "gpt2_config", "llama_style_config"]
