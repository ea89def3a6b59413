"""Fine-tuning examples as numpy arrays, and the one rule for fitting them to a length.

An example is a dict of features: rank-1 ``int32``/``float32`` arrays (one
entry per token, all of the example's length L), scalars (``label``) and
text (``str``, or a tuple of ``str``). Builders return them unpadded.

:func:`pad_rows` is what a trainer does with them: cut every token feature to
``length`` (a plain prefix cut, exactly seqio's trimming, so an over-long
example loses its final ``[SEP]`` as it does in a seqio task) and pad with
zeros. ``attention_mask`` marks real tokens by position, not by id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Example = Mapping[str, Any]


def token_features(example: Example) -> list[str]:
    """The names of ``example``'s rank-1 numeric (per-token) features."""
    return [key for key, value in example.items()
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype != object]


def pad_rows(examples: Sequence[Example], length: int) -> dict[str, np.ndarray]:
    """Token features cut to ``length`` and zero-padded into ``[rows, length]`` arrays.

    Scalar numeric features (``label``) become ``[rows]`` arrays; text is left out.
    Adds ``attention_mask`` (int32, 1 on the kept tokens).
    """
    if not examples:
        raise ValueError("pad_rows needs at least one example")
    keys = token_features(examples[0])
    batch: dict[str, np.ndarray] = {}
    for key in keys:
        dtype = examples[0][key].dtype
        rows = np.zeros((len(examples), length), dtype)
        for row, example in zip(rows, examples):
            kept = example[key][:length]
            row[: len(kept)] = kept
        batch[key] = rows
    lengths = np.array([min(len(e[keys[0]]), length) for e in examples])
    batch["attention_mask"] = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    for key, value in examples[0].items():
        if np.ndim(value) == 0 and isinstance(value, (int, np.integer, np.ndarray)):
            batch[key] = np.array([e[key] for e in examples], np.asarray(value).dtype)
    return batch
