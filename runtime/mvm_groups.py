"""Ideal-mode fast path: a run of consecutive ``mvm`` instructions with the same destination,
source and vector window is one matrix product.

Each ``mvm`` adds ``src[..., rows] @ tile`` into ``dst[..., cols]``; in float arithmetic the
sum over a layer's tiles equals one product with the matrix those tiles form. ``plan`` groups
the instructions once; ``execute_group`` assembles the matrix from whatever the crossbars hold
*now* (so it stays right under reprogramming) and does one matmul. Quantized and analog modes,
batch the group's tiles into one vectorised crossbar read instead (same arithmetic, each tile
through its own ADCs).
"""

from __future__ import annotations

import numpy as np

from isa import Instr

from . import intgemm
from .analog import tiles_mvm


def as_vectors(a: np.ndarray) -> np.ndarray:
    """View [B, ..., K] as [B, V, K] (a view: buffers are contiguous)."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def plan(text: list[Instr]) -> list[Instr | list[Instr]]:
    """The text with each maximal run of same-operand mvms, and each run of writes, replaced
    by a list of them (``execute_group`` and ``semantics.write_group`` run such lists)."""
    steps: list[Instr | list[Instr]] = []
    for ins in text:
        last = steps[-1] if steps else None
        if (ins.op == "mvm" and isinstance(last, list) and last[0].operands == ins.operands
                and last[0].attr("vecs") == ins.attr("vecs")):
            last.append(ins)
        elif ins.op == "write" and isinstance(last, list) and last[0].op == "write":
            last.append(ins)
        elif ins.op in ("mvm", "write"):
            steps.append([ins])
        else:
            steps.append(ins)
    return steps


def execute_group(m, group: list[Instr]) -> None:
    """Run a group of mvms: one float matmul (ideal) or one batched crossbar read."""
    if m.mode == "ideal":
        _ideal_group(m, group)
    else:
        _device_group(m, group)


BYTES_PER_CHUNK = 256 * 2 ** 20
READ_BYTES = 4 * 3  # per input bit, vector and physical column of a crossbar read


# With fewer samples than threads (one image), a layer's tiles are shared out in this many
# chunks a thread: the pool hands them out as threads free up, which evens out chunks of
# unequal work. ResNet-50, one analog image on two threads, programming included: 3.6-3.8 s
# with one chunk a thread, 3.3-3.6 with two, 3.7-4.0 with three or four (more, smaller
# reads).
CHUNKS_PER_THREAD = 2


def read_bytes(arch, vectors: int) -> int:
    """The working set of one tile's batched read by ``vectors`` vectors (``tiles_mvm``'s
    planes, currents and noise)."""
    return arch.input_bits * vectors * arch.cols * READ_BYTES


def _device_group(m, group: list[Instr]) -> None:
    """Quantized/analog: the group's tiles read in batches of tiles (memory-bounded), and
    with ``m.threads`` > 1 those batches, and contiguous runs of samples within them, read
    concurrently (with fewer samples than threads, batches of at most a thread's share of
    the tiles). Every output element depends only on its own sample (its inputs, DAC range
    and noise) and tile, so the split never changes a result; partial sums are added into
    ``dst`` in one fixed order."""
    v0, v1 = group[0].attr("vecs")
    dst, src = as_vectors(m.read(group[0].operands[0])), as_vectors(m.read(group[0].operands[1]))
    x = src[:, v0:v1]
    b, v = x.shape[:2]
    x_range = m.input_range(group[0].operands[1], src)
    x_range = np.broadcast_to(x_range, (b, v, 1)).reshape(-1, 1)
    step = max(1, m.read_budget // max(read_bytes(m.chip.arch, b * v), 1))
    if b < m.threads:  # too few samples to share out (one image): share the tiles out
        step = min(step, -(-len(group) // (m.threads * CHUNKS_PER_THREAD)))
    chunks = [group[i:i + step] for i in range(0, len(group), step)]
    parts = even_runs(b, max(1, m.threads // len(chunks)))
    units = [(k, s0, s1) for k in range(len(chunks)) for s0, s1 in parts]

    def read(unit: tuple[int, int, int]) -> np.ndarray:
        k, s0, s1 = unit
        chunk = chunks[k]
        progs = [m.xbar(i.attr("xb"), (i.attr("rows")[1] - i.attr("rows")[0],
                                       i.attr("cols")[1] - i.attr("cols")[0]), i) for i in chunk]
        windows = [tuple(i.attr("rows")) for i in chunk]
        distinct = list(dict.fromkeys(windows))  # tiles of one row window read one input
        rows = max(r1 - r0 for r0, r1 in distinct)
        xs = np.zeros((len(distinct), (s1 - s0) * v, rows), np.float32)
        for u, (r0, r1) in enumerate(distinct):
            xs[u, :, :r1 - r0] = x[s0:s1, :, r0:r1].reshape(-1, r1 - r0)
        return tiles_mvm(xs, x_range[s0 * v:s1 * v], progs, m.chip,
                         _read_noise(m, group[0], k * step, len(chunk), s0, (s1 - s0, v)),
                         [distinct.index(w) for w in windows])
    for (k, s0, s1), ys in zip(units, m.map(read, units)):
        for t, ins in enumerate(chunks[k]):
            c0, c1 = ins.attr("cols")
            dst[s0:s1, v0:v1, c0:c1] += ys[t, :, :c1 - c0].reshape(s1 - s0, v, c1 - c0)


def even_runs(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, near-equal runs ``(start, stop)`` of ``range(count)`` (fewer
    if too few): the samples of a read split over threads, or of a dataset over shards."""
    edges = [round(i * count / parts) for i in range(parts + 1)]
    return [(a, z) for a, z in zip(edges, edges[1:]) if z > a]


def _read_noise(m, first: Instr, start: int, count: int, sample: int, vectors: tuple):
    """The read noise of ``count`` of the group's tiles from ``start`` on, for ``vectors``
    [B, V] of the pass's samples from ``sample`` on, keyed by tile and sample: each
    sample's V vectors through each tile draw from their own stream, however the tiles and
    samples are chunked (None: no noise)."""
    if m.noise is None:
        return None
    b, v = vectors
    return m.noise.read_streams(m.lines[id(first)], start + np.arange(count),
                                sample + np.arange(b), v)


def span(group: list[Instr], attr: str) -> tuple[int, int]:
    """The lowest start and highest end of the group's ``attr`` ranges ("rows", "cols")."""
    return min(i.attr(attr)[0] for i in group), max(i.attr(attr)[1] for i in group)


def _ideal_group(m, group: list[Instr]) -> None:
    v0, v1 = group[0].attr("vecs")
    c_lo, c_hi = span(group, "cols")
    dst = as_vectors(m.read(group[0].operands[0]))
    dst[:, v0:v1, c_lo:c_hi] += ideal_product(m, group)


def ideal_product(m, group: list[Instr]) -> np.ndarray:
    """What an ideal-mode mvm group adds into its destination's vectors ``vecs`` and its
    tiles' columns (lowest to highest): ``src @ matrix``, the matrix assembled from what the
    crossbars hold now, one MLAS product (``intgemm.sgemm``) over all of the machine's
    samples, its rows shared out to the machine's threads. A new array [B, V, columns]."""
    (r_lo, r_hi), (c_lo, c_hi) = span(group, "rows"), span(group, "cols")
    matrix = np.zeros((r_hi - r_lo, c_hi - c_lo), np.float32)
    for ins in group:
        (r0, r1), (c0, c1) = ins.attr("rows"), ins.attr("cols")
        matrix[r0 - r_lo:r1 - r_lo, c0 - c_lo:c1 - c_lo] += m.xbar(ins.attr("xb"),
                                                                   (r1 - r0, c1 - c0), ins)
    v0, v1 = group[0].attr("vecs")
    x = as_vectors(m.read(group[0].operands[1]))[:, v0:v1, r_lo:r_hi]
    out = np.empty(x.shape[:2] + (c_hi - c_lo,), np.float32)
    a, y = np.ascontiguousarray(x.reshape(-1, x.shape[2])), out.reshape(-1, out.shape[2])
    # rows shared out to the machine's threads, two at least each (``intgemm.sgemm``: a
    # row's floats do not depend on the rows beside it)
    rows = even_runs(len(a), max(1, min(m.threads, len(a) // 2)))
    m.map(lambda r: intgemm.sgemm(a[r[0]:r[1]], matrix, y[r[0]:r[1]]), rows)
    return out
