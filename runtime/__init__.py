"""Cycle-level simulator of an RRAM crossbar chip executing ``.cim`` programs."""

from .errors import RunError
from .interpreter import MODES, RunResult, run

__all__ = ["run", "RunResult", "RunError", "MODES"]
