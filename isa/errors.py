"""The one error type of the ISA package."""

from __future__ import annotations


class IsaError(Exception):
    """A malformed, corrupted or inconsistent program; ``line``/``column`` are 1-based."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.line, self.column = line, column
        where = f"line {line}:{column}: " if line is not None else ""
        super().__init__(where + message)
