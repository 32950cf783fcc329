"""The memory a run needs, estimated from the program before anything is allocated, and the
check against what this machine (and the process's address-space limit) still has.

``estimate_bytes`` is deliberately an upper estimate: every buffer at the run's batch, the
largest of them twice more for one instruction's temporaries, a copy of the blobs (the ideal
mode's group matrices, the device modes' quantized tiles), and in quantized and analog modes
the cells of every crossbar the program writes plus the bounded working set of a batched
crossbar read (``mvm_groups.BYTES_PER_CHUNK``, or one tile's read if that is larger). Analog
mode also keeps a stuck mask and wear counts of every cell of each crossbar it writes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

from isa import Program
from isa.limits import available_bytes, memory_problem, tensor_bytes

from .errors import RunError
from .mvm_groups import BYTES_PER_CHUNK, read_bytes

TEMPORARIES = 2         # an instruction's temporaries, in units of the largest buffer
EVENT_BYTES = 400       # one timeline event (two timelines: the schedule and its bound)
# Bytes per physical cell (2 signs x slices per weight) of the tile each written crossbar
# holds: Programmed.cells float32 and .target int64; analog also keeps the last digits int64.
TILE_CELL_BYTES = {"quantized": 4 + 8, "analog": 4 + 8 + 8}
# Bytes per physical cell of the whole crossbar: analog's stuck mask int8 and wear counts int64.
CROSSBAR_CELL_BYTES = {"quantized": 0, "analog": 1 + 8}
PROGRAMMING_BYTES = 48  # per cell of the tile being programmed: encode's temporaries
# Copies of its largest blob each further run of samples holds at once (a layer's matrix
# assembled in float32, or the digital unit's quantized weights and their int64 cast)
FORK_BLOB_COPIES = 4


def _groups(program: Program, samples: int) -> int:
    """Passes of the compiled batch that ``samples`` samples need."""
    return max(1, -(-samples // program.batch))


def _buffers(program: Program, scale: int, groups: int) -> int:
    """Every buffer with its leading axis scaled, temporaries, and (when the run goes in
    chunks) the outputs of every chunk and their concatenation."""
    sizes = [tensor_bytes(b.type) * (scale if b.type.shape else 1) for b in program.buffers]
    need = sum(sizes) + TEMPORARIES * max(sizes, default=0)
    if scale == 1 and groups > 1:
        outputs = {p.buffer for p in program.outputs}
        need += 2 * groups * sum(tensor_bytes(b.type) for b in program.buffers
                                 if b.name in outputs)
    return need


def _crossbar_state(program: Program, mode: str) -> int:
    """The cells of every crossbar the program writes (its largest tile; analog: the whole
    crossbar too) and the temporaries of programming the largest tile."""
    a = program.chip
    tiles: dict[int, int] = {}
    for ins in program.text:
        if ins.op == "write":
            (r0, r1), (c0, c1) = ins.attr("rows"), ins.attr("cols")
            tiles[ins.attr("xb")] = max(tiles.get(ins.attr("xb"), 0), (r1 - r0) * (c1 - c0))
    per_weight = 2 * a.slices  # physical cells
    crossbar = per_weight * a.rows * a.weights_per_row
    state = sum(per_weight * t * TILE_CELL_BYTES[mode] + crossbar * CROSSBAR_CELL_BYTES[mode]
                for t in tiles.values())
    return state + PROGRAMMING_BYTES * per_weight * max(tiles.values(), default=0)


def _device_read(program: Program, scale: int) -> int:
    """The batched crossbar read's working set (as ``mvm_groups._device_group`` sizes its
    chunks): at least one tile's read, at most ``BYTES_PER_CHUNK`` otherwise."""
    shapes = program.buffer_map()
    largest = 0
    for ins in program.text:
        if ins.op == "mvm":
            v0, v1 = ins.attr("vecs")
            vectors = shapes[ins.operands[1][1:]].type.shape[0] * scale * (v1 - v0)
            largest = max(largest, read_bytes(program.chip, vectors))
    return max(largest, BYTES_PER_CHUNK) if largest else 0


def estimate_bytes(program: Program, samples: int, mode: str, runs: int = 1) -> int:
    """Bytes a run of ``samples`` samples (the inputs' leading axis: a multiple of the
    compiled batch) in ``mode`` is expected to allocate, beyond the loaded program, when a
    pass runs in up to ``runs`` runs of samples at once (``interpreter._forked``: each
    assembles or quantizes its layers' weights itself)."""
    groups = _groups(program, samples)
    need = EVENT_BYTES * 2 * len(program.text)
    if mode == "timing":
        return need
    scale = groups if program.batch_free else 1
    need += _buffers(program, scale, groups) + sum(b.data.nbytes for b in program.blobs)
    largest = max((b.data.nbytes for b in program.blobs), default=0)
    need += (runs - 1) * FORK_BLOB_COPIES * largest
    if mode in TILE_CELL_BYTES:
        need += _crossbar_state(program, mode) + _device_read(program, scale)
    return need


def check_memory(need: int, what: str) -> None:
    """Raise RunError when ``need`` bytes exceed what this process may still allocate (the
    machine's available memory, and the soft RLIMIT_AS less what is in use)."""
    problem = memory_problem(need, what)
    if problem:
        raise RunError(f"{problem}; run fewer samples at a time (split --input)")


# glibc gives freed memory back to the OS as soon as more than its trim threshold lies free at
# the top of the heap. A run frees and allocates arrays of the same sizes instruction after
# instruction, so every pass faulted its pages in again: ResNet-50 in ideal mode took 40,000
# page faults, a third of the time of a pass. Keeping a pass's worth of freed memory for
# reuse stops that (512 MB served one ResNet-50 image, not four); arrays above glibc's
# largest mmap threshold (32 MB) still get mappings of their own.
KEEP_FREED_BYTES = 512 * 2 ** 20  # at least
KEEP_FREED_SHARE = 4  # at most this fraction of the memory available when a run starts
MMAP_THRESHOLD_BYTES = 32 * 2 ** 20
# A read thread's arena is a chain of heaps of at most 64 MB (glibc's HEAP_MAX_SIZE on 64-bit
# machines), and glibc unmaps a heap as soon as all of it is free, whatever the trim
# threshold, unless fewer than the top pad's bytes would be left free below it (arena.c's
# heap_trim). A top pad of a whole heap keeps them: ResNet-50 analog, four images on two
# threads, 290,000-370,000 -> 230,000 page faults, 3.5 -> 2.0 s of system time; two images'
# time 6.9-7.1 -> 6.4-6.7 s, side by side, the same peak memory. A thread's heaps then keep
# its peak until ``release_freed_memory`` (after a machine's first crossbar writes) gives
# their free pages back, and the main heap's break grows by the pad each time it grows
# (address space, which a soft RLIMIT_AS counts, not resident memory).
TOP_PAD_BYTES = 64 * 2 ** 20
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
_kept = [0]  # the trim threshold this process has set so far


def keep_freed_memory(pass_bytes: int = 0) -> bool:
    """Have glibc's malloc keep freed memory for reuse in each of its arenas (the main
    thread's, and one per read thread at most, which keep every heap: ``TOP_PAD_BYTES``),
    from now on for the whole process: a pass's ``pass_bytes`` (``estimate_bytes``), at
    least KEEP_FREED_BYTES, at most a KEEP_FREED_SHARE-th of the available memory, and
    never less than an earlier call kept. ``run`` calls it; ``CIMSTACK_KEEP_FREED=0``
    skips it. Kept memory counts as in use for a later run's memory check in the same
    process. True when set; False elsewhere than glibc."""
    libc = _glibc()
    if os.environ.get("CIMSTACK_KEEP_FREED") == "0" or libc is None:
        return False
    available = available_bytes()
    cap = available // KEEP_FREED_SHARE if available else KEEP_FREED_BYTES
    # never lowered: glibc trims all the free top of the heap once it passes the threshold,
    # so a smaller pass after a larger one would fault the larger one's pages in again
    _kept[0] = max(_kept[0], KEEP_FREED_BYTES, min(pass_bytes, cap, 2 ** 31 - 1))
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, _kept[0])
                and libc.mallopt(_M_TOP_PAD, TOP_PAD_BYTES)
                and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_freed_memory() -> None:
    """Give the free pages inside glibc's heap back to the OS (malloc_trim; nothing elsewhere
    than glibc). Programming thousands of crossbars leaves holes between the cells it keeps:
    ResNet-50's 12,504 left 0.5 GB of them, which reads did not reuse."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    """This process's C library when it is glibc with mallopt and malloc_trim, else None
    (looked up once, for both callers)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
