"""Training objectives: what the train and eval steps compute for each model family.

- ``base``: the `Objective` protocol and the sums they share.
- ``language_modeling``: `CausalLm` (decoder-only, the default) and `Seq2Seq`
  (encoder-decoder, T5).
- ``encoder``: `BertPretraining` (MLM + NSP), `SequenceClassification`,
  `TokenClassification`.

Choose one in gin with ``train.objective = @SequenceClassification()``.
"""

from llmos_jax.objectives.base import Objective, check_batch_features
from llmos_jax.objectives.encoder import (BertPretraining, SequenceClassification,
                                                   TokenClassification)
from llmos_jax.objectives.language_modeling import CausalLm, Seq2Seq

__all__ = ["Objective", "check_batch_features", "CausalLm", "Seq2Seq", "BertPretraining",
           "SequenceClassification", "TokenClassification"]
