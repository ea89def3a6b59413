"""Inference: KV-cache decoding (greedy, sampling, beam search) and scoring."""

from llmos_jax.inference.completions import Completion, RequestResult
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.generate import generate
from llmos_jax.inference.scoring import TargetScore, score

__all__ = ["Completion", "DecodeConfig", "RequestResult", "TargetScore", "generate", "score"]
