"""Evaluation: running a Task's metrics over a split (predictors per objective, the evaluator).

The metric functions themselves live one layer down, in `llmos_jax.metrics`;
they stay importable from here for code written before that package existed.
``import llmos_jax.evaluation`` pulls in no TensorFlow or seqio.
"""

from llmos_jax import metrics
from llmos_jax.metrics import (accuracy, bleu, conll_span_f1, macro_f1, perplexity, rouge,
                               token_accuracy)

__all__ = list(metrics.__all__)
