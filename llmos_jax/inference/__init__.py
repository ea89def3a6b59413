"""Inference: KV-cache decoding (greedy, sampling, beam search) and scoring."""

from llmos_jax.inference.completions import Completion, RequestResult, TargetScore
from llmos_jax.inference.decode_config import DecodeConfig, with_default_eos
from llmos_jax.inference.decoding_engine import DecodingEngine
from llmos_jax.inference.generate import generate
from llmos_jax.inference.scoring import score

__all__ = ["Completion", "DecodeConfig", "DecodingEngine", "RequestResult", "TargetScore",
           "generate", "score", "with_default_eos"]
