"""Checkpoints: the one owner of the on-disk layout of a run's saved state.

A run's ``model_dir`` holds ``checkpoints/<step>/`` (Orbax: the training state
and its metadata), and exports hold ``params/`` plus ``meta.json``. Only this
package knows those names: training saves through it, and ``llmos eval``,
``llmos infer`` and warm starts find and read through it.
"""
