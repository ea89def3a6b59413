"""The data layer: seqio Tasks and deterministic, resumable LM batches.

Submodules import seqio and TensorFlow, so import them directly (e.g.
``llmos_jax.data.lm_batches``); importing this package alone stays cheap.

- ``stdlib_corpus``: the default corpus, this interpreter's stdlib sources.
- ``preprocessors``: seqio preprocessors (chunking long documents).
- ``text_tasks``: registers byte-level seqio Tasks (stdlib, a text file).
- ``lm_batches``: ``LMBatches``, the ``batch = f(seed, step)`` loader.
"""
