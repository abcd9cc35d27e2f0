"""The order in which a run visits its dataset rows: epoch after epoch, each a permutation seeded by (seed, epoch).

Batches run across epoch boundaries (the tail of one epoch and the head of the next), so every row is visited
once per epoch whatever the batch size. The whole state is two integers (``state()`` / ``IndexOrder(...,
**state)``), kept in each checkpoint, so a resumed run, at an epoch boundary or not, takes the same rows next.
"""

from __future__ import annotations

import numpy as np


class IndexOrder:
    def __init__(self, n: int, seed: int = 0, epoch: int = 0, position: int = 0):
        if n < 1:
            raise ValueError("the dataset is empty: nothing to sample")
        if not 0 <= position <= n:
            raise ValueError(f"position {position} is outside an epoch of {n} rows")
        self.n, self.seed, self.epoch, self.position = n, seed, epoch, position
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        """The next ``k`` row indices."""
        out: list[int] = []
        while len(out) < k:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            j = min(self.n, self.position + k - len(out))
            out += [int(i) for i in self._perm[self.position : j]]
            self.position = j
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}
