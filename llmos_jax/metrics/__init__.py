"""The metric functions by name, for Task definitions and gin.

Every function has seqio's shape, ``fn(targets, predictions)`` or
``fn(targets, scores)``, and returns ``{metric_name: float}``. They are also
gin configurables under the module ``llmos_jax.evaluation``, so a gin file
can pass them to a Task factory::

    register_translation_task.metric_fns = [@llmos_jax.evaluation.bleu]

Percent-valued metrics (accuracy, F1, exact match, BLEU, ROUGE, token accuracy) are
reported on a 0-100 scale; perplexity and NLL are raw.
"""

import gin

from llmos_jax.metrics.answer_match import answer_f1, exact_match
from llmos_jax.metrics.classification import accuracy, macro_f1
from llmos_jax.metrics.conll import conll_span_f1
from llmos_jax.metrics.generation import bleu, rouge
from llmos_jax.metrics.language_modeling import perplexity, token_accuracy
from llmos_jax.metrics.multiple_choice import multiple_choice_accuracy

PREDICTION_METRICS = (accuracy, macro_f1, conll_span_f1, bleu, rouge, exact_match, answer_f1)
SCORE_METRICS = (perplexity, token_accuracy, multiple_choice_accuracy)

for _metric in PREDICTION_METRICS + SCORE_METRICS:
    gin.external_configurable(_metric, module="llmos_jax.evaluation")

__all__ = [
    "accuracy",
    "answer_f1",
    "bleu",
    "conll_span_f1",
    "exact_match",
    "macro_f1",
    "multiple_choice_accuracy",
    "perplexity",
    "rouge",
    "token_accuracy",
]
