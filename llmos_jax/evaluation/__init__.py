"""Evaluation: seqio-shaped metric functions and the split evaluator.

``import llmos_jax.evaluation`` pulls in no TensorFlow or seqio; the
reference packages behind BLEU and ROUGE load on first use
(``pip install 'llmos_jax[eval]'``).
"""

from llmos_jax.metrics import (
    accuracy,
    bleu,
    conll_span_f1,
    macro_f1,
    perplexity,
    rouge,
    token_accuracy,
)

__all__ = [
    "accuracy",
    "bleu",
    "conll_span_f1",
    "macro_f1",
    "perplexity",
    "rouge",
    "token_accuracy",
]
