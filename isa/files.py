"""Files users hand us and files we hand back: one atomic writer, one safe array reader.

``write_atomic`` writes through a temporary file in the target's directory and renames it
over the target, so a crash or an error never leaves half a file and never touches an existing
one; the result gets the permissions a plain ``open`` would give (the umask), not mkstemp's
0600. ``check_writable`` lets a command refuse a bad output path before any long work, and
``check_distinct`` one that would overwrite an input or another output.
``load_array`` reads ``.npy``/``.npz`` without ever unpickling. Both raise ``IsaError`` with
the user's own path in the message.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Callable

import numpy as np

from .errors import IsaError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_writable(path: str, flag: str) -> None:
    """Raise IsaError unless ``path`` can be created or replaced (checked before long work)."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsaError(f"{flag} {path}: is a directory")
    if not os.path.isdir(directory):
        raise IsaError(f"{flag} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise IsaError(f"{flag} {path}: directory {directory} is not writable")


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same resolved path, or (both existing) the same
    inode, as a hard link gives."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): they differ
        return False


def check_distinct(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Raise IsaError where an output (flag -> path; None: not given) names an input file or
    another output, by any path: writing it would destroy what the command reads, or one
    output would replace another. Checked before any work."""
    outs = [(flag, path) for flag, path in outputs.items() if path]
    for i, (flag, path) in enumerate(outs):
        for other, earlier in outs[:i]:
            if _same_file(path, earlier):
                raise IsaError(f"{other} and {flag} must name different files (both {path})")
        for source, given in inputs.items():
            if given and _same_file(path, given):
                raise IsaError(f"{flag} {path} is also the {source} file; writing it would "
                               "replace what this command reads: write somewhere else")


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                                   suffix=os.path.splitext(path)[1])
    except OSError as exc:
        raise IsaError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    try:
        os.chmod(tmp, _umask_mode())
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise IsaError(f"{path}: cannot write ({exc.strerror})") from None
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    write_atomic(path, write)


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


_MAGIC = (b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")


def load_array(path: str, flag: str = "") -> np.ndarray | dict[str, np.ndarray]:
    """An array from ``.npy`` (or a dict of arrays from ``.npz``), never unpickled.

    Raises IsaError naming ``flag`` and ``path``: missing file, a directory, a file that is not
    a numpy array file, pickled objects."""
    where = f"{flag} {path}".strip()
    if os.path.isdir(path):
        raise IsaError(f"{where}: is a directory, not a .npy/.npz file")
    if not os.path.isfile(path):
        raise IsaError(f"{where}: no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(_MAGIC):
        raise IsaError(f"{where}: not a .npy/.npz array file (save arrays with numpy.save)")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return {k: data[k] for k in data.files}
        return data
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise IsaError(f"{where}: holds pickled Python objects; save a plain numeric array "
                           "(numpy.save of a float32 array)") from None
        raise IsaError(f"{where}: not a readable .npy/.npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise IsaError(f"{where}: not a readable .npy/.npz file ({exc})") from None
