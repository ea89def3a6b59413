"""Row order of a materialised split, as a pure function of (seed, position).

Global position ``p`` is row ``perm_e[p % N]`` of epoch ``e = p // N``, where
``perm_e = default_rng([seed, e]).permutation(N)``. Batch ``s`` of size ``B``
covers positions ``[s * B, (s + 1) * B)``, so batches are a function of (seed,
step), resume needs only the step, and no epoch is read twice before every
row was read once. Numpy only: reference scripts use it to see the same order.
"""

from __future__ import annotations

import numpy as np

_CACHED_EPOCHS = 2  # A batch touches at most two epochs when B <= N.


class EpochOrder:
    """Maps global positions to rows of a split of ``num_rows`` rows."""

    def __init__(self, num_rows: int, seed: int):
        self.num_rows = num_rows
        self.seed = seed
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= _CACHED_EPOCHS:
                self._permutations.pop(min(self._permutations))
            self._permutations[epoch] = np.random.default_rng(
                [self.seed, epoch]).permutation(self.num_rows)
        return self._permutations[epoch]

    def rows_at(self, start: int, count: int) -> np.ndarray:
        """Row indices of global positions ``[start, start + count)``."""
        epochs, offsets = np.divmod(np.arange(start, start + count, dtype=np.int64), self.num_rows)
        rows = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            rows[in_epoch] = self._permutation(int(epoch))[offsets[in_epoch]]
        return rows
