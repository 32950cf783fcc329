"""The one exception cimsweep raises for a user's mistake."""


class SweepError(Exception):
    """A sweep file, flag or results file the user must fix; the CLI prints it and exits 2."""
