"""Progress bars for long compiles and basis fits.

Shown on stderr only when the caller asks (``progress=True``; ``cimc`` asks when stderr is a
terminal and ``-q`` is not given), only on a terminal, and only once the work has taken 2 s,
so short compiles print nothing. Every bar disappears when its work ends.
"""

from __future__ import annotations

import sys
from typing import Iterable

from tqdm import tqdm


def bar(items: Iterable, enabled: bool, desc: str, unit: str = "it",
        total: int | None = None) -> tqdm:
    """``items``, wrapped in a progress bar when ``enabled``."""
    return tqdm(items, desc=desc, unit=unit, total=total, delay=2.0, leave=False,
                disable=None if enabled else True)


def write(message: str) -> None:
    """Print one line to stderr without breaking a bar that is showing."""
    tqdm.write(message, file=sys.stderr)
