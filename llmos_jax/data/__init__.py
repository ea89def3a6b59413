"""The data layer: seqio Tasks and deterministic, resumable LM batches.

Submodules import seqio and TensorFlow, so import them directly (e.g.
``llmos_jax.data.lm_batches``); importing this package alone stays cheap.
docs/data.md is the user guide.

- ``data_dir``: where relative data paths point (gin ``data_dir.path``,
  ``$LLMOS_DATA_DIR``, or ``../shared/data`` beside the checkout).
- ``records``: parsing text/lines/TSV/JSONL/JSON files (gzipped or not),
  with a strict or skip-and-count policy for malformed lines.
- ``sources``: seqio sources over those files, Python functions and TFDS.
- ``char_vocabulary``, ``sentencepiece_vocab``: character and SentencePiece
  vocabularies (training included); bytes use ``seqio.ByteVocabulary``.
- ``wordpiece_tokenizer`` (pure Python), ``wordpiece_vocab``: BERT WordPiece
  (all-MiniLM-L6-v2's ``vocab.txt``), tokenizing as Hugging Face does.
- ``finetune_tasks``: SST-2, CoNLL-2003, Multi30k and DialogSum example
  builders (no TensorFlow) and their seqio tasks.
- ``registry``: Task/Mixture registration recipes and the one name lookup.
- ``catalog``: the built-in tasks, registered on first use.
- ``stdlib_corpus``, ``text_tasks``: the default corpus and plain-text tasks.
- ``preprocessors``: seqio preprocessors (chunking long documents).
- ``feature_converters``: LM, prefix-LM and encoder-decoder model features.
- ``truncation``: counting what trimming to the sequence length cuts.
- ``materialise``: a split as numpy arrays of model features.
- ``lm_batches``: ``LMBatches``, the ``batch = f(seed, step)`` loader.
- ``task_cache``: caching a Task with Apache Beam (``tools/cache_task.py``).
"""
