"""The one error type of the runtime package."""


class RunError(Exception):
    """A bad input, a bad option, or a program the runtime cannot execute; CLI exit status 2."""
