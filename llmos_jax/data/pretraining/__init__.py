"""Self-supervised pretraining objectives as seqio preprocessors (tf.data).

- ``random_streams``: per-example stateless seeds, so outputs are a pure
  function of (seed, example index).
- ``span_corruption``: T5's objective (noise spans -> sentinels).
- ``next_sentence_pairs``: BERT's sentence pairs, half true continuations.
- ``masked_lm``: BERT's 80/10/10 token masking.
- ``bert_pretraining``: pairs + masking -> padded MLM + NSP examples.
"""
