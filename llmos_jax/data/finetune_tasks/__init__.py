"""Fine-tuning datasets: GLUE SST-2, CoNLL-2003 NER, Multi30k En-De and DialogSum.

One module per dataset holds its pure-Python example builder (read the files,
tokenize, align labels), importable without TensorFlow, so the seqio tasks
and the PyTorch reference (``benchmarks/hf_finetune_minilm.py``) see the same
examples and token ids:

- ``sst2``: sentence classification, WordPiece ``input_ids`` + ``label``.
- ``conll2003``: NER as token classification (IOB1 -> IOB2, labels on each
  word's first sub-token), plus word-level tags for span F1.
- ``multi30k``, ``dialogsum``: text pairs (``inputs``, ``targets``) for seq2seq.
- ``example_arrays``: shared helpers (plain truncation, padding into batches).

``seqio_tasks`` (imports seqio and TensorFlow) registers them as
``sst2_minilm``, ``conll2003_minilm``, ``multi30k_en_de_spm`` and
``dialogsum_spm``; ``llmos_jax.data.catalog`` lists them.
"""
