"""Read and programming noise keyed by sample, so that a sample's result does not depend on
which other samples share its run: the same images give the same outputs whether they run
alone, in a dataset of 540, or split into chunks by ``--memory-limit``.

Every draw comes from its own generator, seeded by (run seed, purpose, the instruction's line,
what it reads, the sample's index in the whole input): one small generator per sample and
instruction, each drawing a whole array at once.
"""

from __future__ import annotations

import numpy as np

READ, DYNAMIC = 3, 5  # purposes (1: stuck cells and 2: static writes key by crossbar instead)


class SampleNoise:
    """The noise of one pass over samples ``first``, ``first + 1``, ... of a run."""

    def __init__(self, seed: int, first: int = 0):
        self.seed, self.first = seed, first

    def generator(self, purpose: int, key: tuple, sample: int) -> np.random.Generator:
        """The generator of local ``sample`` for (``purpose``, ``key``)."""
        return np.random.default_rng([self.seed, purpose, *key, self.first + sample])

    def normal(self, purpose: int, key: tuple, samples: int, shape: tuple,
               axis: int, offset: int = 0) -> np.ndarray:
        """float32 N(0, 1) draws: ``shape`` for each of ``samples`` local samples from
        ``offset`` on, joined along ``axis`` in sample order."""
        return np.concatenate([self.generator(purpose, key, offset + b).standard_normal(
            shape, dtype=np.float32) for b in range(samples)], axis=axis)
