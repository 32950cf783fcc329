"""Physical and practical limits, checked wherever a value from outside enters.

A geometry comes from ``cimc`` flags, a chip TOML's ``[arch]`` or a ``.cim`` header that
someone else wrote; a header also declares a batch, buffer and blob shapes. All of it is checked
here before anything is sized by it, so a header that claims a billion crossbars or a blob that
claims a terabyte fails at once instead of allocating for it. ``available_bytes`` is the one
probe of how much memory this process may still allocate (the parser and the runtime use it).
"""

from __future__ import annotations

import math
import os
import resource

from .errors import IsaError
from .program import DTYPES, ChipGeometry, TensorType

# field -> (lowest, highest) accepted value, with why the bound is where it is.
GEOMETRY = {
    "xbars": (1, 1 << 20),       # a million arrays: 80x ResNet-50's 12,504 weight tiles
    "rows": (1, 8192),           # fabricated RRAM arrays are 64..1024 rows
    "cols": (2, 8192),
    "cell_bits": (1, 8),         # multi-level cells hold 1..4 bits in the literature
    "weight_bits": (2, 16),      # a sign and at least one magnitude bit; int16 at most
    "input_bits": (1, 16),
    "dac_bits": (1, 16),
    "adc_bits": (1, 16),
    "adc_per_step": (0, 1),
}

BATCH = (1, 65536)               # samples one pass of the text runs
MAX_RANK = 8                     # ONNX models in practice stay within 6 axes
MAX_ELEMENTS = 1 << 31           # per tensor: 8 GiB of float32, beyond any one activation
MAX_DECLARED_BYTES = 1 << 36     # all buffers (at the compiled batch) and blobs together
MAX_OFFSET = MAX_DECLARED_BYTES  # a scratchpad byte offset
MAX_FILE_BYTES = 1 << 34         # a .cim file: blobs are compressed, so this is generous
READ_FACTOR = 4                  # peak bytes per file byte while reading (text, body, tokens)


def geometry_problem(chip: ChipGeometry) -> tuple[str, str] | None:
    """(field, what is wrong) for the first field of ``chip`` outside ``GEOMETRY`` or a row
    that cannot hold one weight; None when the geometry is sane."""
    for name, (low, high) in GEOMETRY.items():
        value = getattr(chip, name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            return name, f"{name} = {value!r} is out of range ({low}..{high})"
    if chip.dac_bits > chip.input_bits:
        return "dac_bits", (f"dac_bits = {chip.dac_bits} is more than input_bits = "
                            f"{chip.input_bits} (a DAC step applies at most every input bit)")
    if chip.cols < 2 * chip.slices:
        return "cols", (f"cols = {chip.cols} cannot hold one {chip.weight_bits}-bit weight "
                        f"({chip.slices} slices x 2 differential cells)")
    return None


def check_geometry(chip: ChipGeometry, where: str = "chip") -> ChipGeometry:
    """Return ``chip`` if every field is within ``GEOMETRY`` and one weight fits a crossbar
    row; else raise IsaError naming ``where`` and the field."""
    problem = geometry_problem(chip)
    if problem:
        raise IsaError(f"{where}: {problem[1]}")
    return chip


def batch_problem(batch: int) -> str | None:
    """What is wrong with a header's batch, or None."""
    low, high = BATCH
    return None if low <= batch <= high else f"batch {batch} is out of range ({low}..{high})"


def tensor_bytes(ttype: TensorType) -> int:
    """Bytes of a tensor of this type (exact Python integer: no overflow)."""
    return math.prod(ttype.shape) * DTYPES[ttype.dtype]().itemsize


def tensor_problem(ttype: TensorType) -> str | None:
    """What is wrong with a declared tensor type (rank, a negative dimension, too many
    elements), or None. Empty tensors (a dimension 0) are allowed, as in ONNX."""
    if len(ttype.shape) > MAX_RANK:
        return f"type {ttype} has rank {len(ttype.shape)}; at most {MAX_RANK} is supported"
    if any(d < 0 for d in ttype.shape):
        return f"type {ttype} has a negative dimension"
    if math.prod(ttype.shape) > MAX_ELEMENTS:
        return f"type {ttype} has more than {MAX_ELEMENTS} elements"
    return None


def _proc_bytes(path: str, key: str) -> int | None:
    """The ``key:  N kB`` line of a /proc status file in bytes; None if it cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, else free physical pages; None if unknown."""
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _virtual_size() -> int:
    """This process's virtual size in bytes (what RLIMIT_AS counts); 0 if unknown."""
    return _proc_bytes("/proc/self/status", "VmSize") or 0


def available_bytes() -> int | None:
    """Bytes this process may still allocate: the machine's available memory, capped by the
    soft RLIMIT_AS less the address space already in use; None if neither is known."""
    limits = [_meminfo_available()]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - _virtual_size()))
    known = [x for x in limits if x is not None]
    return min(known) if known else None


def size_text(nbytes: int) -> str:
    """``N.N GB``; below a tenth of that ``N.N MB``, and below a tenth of that ``N bytes``."""
    if nbytes >= 1e8:
        return f"{nbytes / 1e9:.1f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e5 else f"{nbytes} bytes"


def memory_problem(need: int, what: str) -> str | None:
    """``"<what> needs N.N GB, this machine has M.M GB available"`` when ``need`` bytes
    exceed ``available_bytes()``; None when they fit or availability is unknown."""
    have = available_bytes()
    if have is None or need <= have:
        return None
    return f"{what} needs {size_text(need)}, this machine has {size_text(have)} available"
