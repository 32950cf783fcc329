"""What ``cimc`` and ``cimrun`` share as command-line programs."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

SIGPIPE_STATUS = 141  # what a shell reports for a Unix tool whose reader went away
INTERRUPTED = 130  # and for one stopped by Ctrl-C (SIGINT)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``PROG: error: ...; see PROG
    --help``) with exit status 2, like every other user error of these tools."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def quiet_broken_pipe() -> None:
    """After stdout's reader went away (``cimc --dump-ir - | head``): stop writing quietly,
    as Unix tools do, instead of an error at interpreter exit."""
    import os
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
