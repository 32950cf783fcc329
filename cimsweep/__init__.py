"""cimsweep: design-space sweeps and dataset evaluations over cimc and cimrun.

``spec`` reads a sweep file into points, ``tasks`` compiles and runs one, ``executors`` runs
them on this machine or on Ray, ``results`` journals rows and writes the table, ``driver``
ties them together, ``plot`` draws the standard figures, ``cli`` is the ``cimsweep`` command.
"""

from .driver import run_sweep
from .errors import SweepError
from .spec import load

__all__ = ["SweepError", "load", "run_sweep"]
