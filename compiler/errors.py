"""The one error type users of the compiler can cause (bad model, unsupported op, bad option)."""


class CompileError(Exception):
    """A problem with the user's model or options; the CLI prints it on one line, exit 2."""
