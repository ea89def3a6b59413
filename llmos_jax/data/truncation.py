"""Counting what trimming to the sequence length cuts away, so it is never silent.

seqio trims each task feature to its length without a word. Text-to-text
tasks (a long dialogue to summarise) can lose much of their input that way,
and a byte-level task with ``chunk=False`` loses everything past the window.
:func:`count_truncation` measures untrimmed examples against the lengths and
:meth:`TruncationReport.warn` logs the totals when anything was cut.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger("llmos_jax.data")

_COUNT_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class FeatureTruncation:
    """One feature's totals over a split."""

    length: int
    truncated_examples: int
    truncated_tokens: int
    total_tokens: int


@dataclasses.dataclass(frozen=True)
class TruncationReport:
    """How many examples and tokens trimming removes, per task feature."""

    examples: int
    truncated_examples: int  # With at least one feature cut.
    features: dict[str, FeatureTruncation]

    @property
    def truncated_tokens(self) -> int:
        return sum(f.truncated_tokens for f in self.features.values())

    def warn(self, what: str) -> None:
        """Logs a warning naming ``what`` (task and split) when anything was cut."""
        if not self.truncated_tokens:
            return
        details = "; ".join(
            f"{key}: {f.truncated_examples} example(s) longer than {f.length}, "
            f"{f.truncated_tokens} of {f.total_tokens} tokens cut"
            for key, f in self.features.items() if f.truncated_tokens
        )
        log.warning("trimming to the sequence length cuts %d of %d examples of %s (%s); raise "
                    "the sequence length or split long documents to keep them",
                    self.truncated_examples, self.examples, what, details)


def count_truncation(dataset: "tf.data.Dataset", lengths: Mapping[str, int]) -> TruncationReport:
    """Measures untrimmed examples of ``dataset`` against ``lengths`` (rank-1 features)."""
    import tensorflow as tf  # Here, not at the top: reports load on hosts without TensorFlow.

    sizes = dataset.map(lambda ex: {key: tf.size(ex[key]) for key in lengths})
    totals = {key: [0, 0, 0] for key in lengths}  # truncated examples, cut tokens, all tokens.
    examples = any_cut = 0
    for batch in sizes.batch(_COUNT_BATCH).as_numpy_iterator():
        cut_rows = np.zeros(len(next(iter(batch.values()))), bool)
        for key, length in lengths.items():
            size = batch[key].astype(np.int64)
            over = np.maximum(size - length, 0)
            totals[key][0] += int((over > 0).sum())
            totals[key][1] += int(over.sum())
            totals[key][2] += int(size.sum())
            cut_rows |= over > 0
        examples += len(cut_rows)
        any_cut += int(cut_rows.sum())
    features = {key: FeatureTruncation(lengths[key], *totals[key]) for key in lengths}
    return TruncationReport(examples, any_cut, features)
