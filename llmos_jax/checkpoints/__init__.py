"""Checkpoints: the one owner of the on-disk layout of a run's saved state.

A run's ``model_dir`` holds ``checkpoints/<step>/`` (Orbax: the training state
and its metadata, plus ``SHA256SUMS.json``), and exports hold ``params/``,
``meta.json``, extra files and ``SHA256SUMS.json``. Only this package knows
those names: training saves through it (``checkpointer``, ``exports``), and
``llmos eval``, ``llmos infer`` and warm starts find and read through it
(``locations``, ``params_reader``). Damaged steps are found by their checksums
(``manifest``) and skipped, moved aside only by training (``fallback``).
"""
