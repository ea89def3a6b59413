"""Does an encoder-decoder read its input? Target NLL under the right input and under others.

ROUGE alone cannot tell a summariser from a model that has only learnt the
targets' language: on DialogSum one fixed, summary-shaped sentence scores
about 27 ROUGE-1. Teacher-forced NLL under a wrong input can: a model that
uses its input loses a lot when given another example's; one that does not
loses next to nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax import nnx

from llmos_jax.inference.scoring import score


def input_ablation_nll(model: nnx.Module, params: Any, inputs: Sequence[Sequence[int]],
                       targets: Sequence[Sequence[int]], *, eos_id: int,
                       batch_size: int = 25) -> dict[str, float]:
    """Mean target NLL (nats per target token) under three inputs.

    Args:
      model: An `EncoderDecoderLM`.
      params: Its parameters (pure dict or `nnx.State`), or None for its own.
      inputs: Each example's encoder input ids.
      targets: Each example's target ids.
      eos_id: The input of the "EOS only" condition.
      batch_size: Examples scored per call.

    Returns:
      {"own input": …, "next example's input": …, "EOS only": …}; the second
      pairs example i's target with example i+1's input (the last with the first).
    """
    if len(inputs) != len(targets) or len(inputs) < 2:
        raise ValueError(f"input_ablation_nll needs at least 2 (input, target) pairs of equal "
                         f"count, got {len(inputs)} inputs and {len(targets)} targets")
    conditions = {
        "own input": list(inputs),
        "next example's input": list(inputs[1:]) + list(inputs[:1]),
        "EOS only": [[eos_id]] * len(inputs),
    }
    means = {}
    for name, prompts in conditions.items():
        total, count = 0.0, 0
        for start in range(0, len(targets), batch_size):
            stop = start + batch_size
            for result in score(model, params, prompts[start:stop], targets[start:stop]):
                if result.error:
                    raise ValueError(f"{name}: {result.error}")
                total -= result.log_likelihood
                count += result.num_tokens
        means[name] = total / count
    return means
