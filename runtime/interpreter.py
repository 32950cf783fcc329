"""Execute an ``isa.Program`` on the simulated chip (ideal mode: float32 arithmetic).

``run(program, inputs)`` validates the inputs against the program's input ports, runs every
instruction through ``semantics.SEMANTICS`` and returns the outputs with run statistics.
A program whose buffers all lead with the batch axis (``batch free``) runs any multiple of the
compiled batch in one vectorised pass; otherwise the samples run in chunks of the compiled batch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController
from tqdm import tqdm

from isa import Instr, IsaError, Program, cells
from isa.chip import Chip, chip_of
from isa.printer import text_line
from isa.timing import Timeline
from isa.verify import rows_differ, sample_mixing

from . import device
from . import noise as nz
from .epilogues import Fused, fuse, instructions, run_fused
from .errors import RunError
from .ideal_graph import GraphStep, fuse_graphs, run_graph
from .implicit_conv import ConvStep, fuse_convs, run_conv
from .memory import (
    check_memory,
    estimate_bytes,
    keep_freed_memory,
    memory_problem,
    release_freed_memory,
)
from .mvm_groups import BYTES_PER_CHUNK, even_runs, execute_group, plan
from .noise import SampleNoise
from .report import timing_report
from .semantics import SEMANTICS, write_group

MODES = ("ideal", "quantized", "analog", "timing")


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    stats: dict = field(default_factory=dict)
    timeline: Timeline | None = None


class Machine:
    """Buffers, crossbar contents and blob data of one execution.

    In ideal mode a crossbar holds its float tile; in quantized and analog modes it holds the
    ``device.Programmed`` cells, and stuck cells, programming and read noise come from
    streams keyed by the seed and what they are for (``runtime.noise``: the crossbar and
    its write number, or the read and its sample): same program, same seed, same result.
    A crossbar the program writes more than once also keeps the state of all its cells
    (``last_digits``, an ``isa.cells`` state, and ``last_held``, their values): a write
    programs only the cells whose digit changes, and bit stucking (``isa.cells.LowWrite``;
    ignored in ideal mode, which holds float tiles) only some of those in the low-order
    slices. ``cells_changed`` counts the cells writes programmed, as ``isa.timing`` does.
    """

    def __init__(self, program: Program, scale: int, mode: str = "ideal",
                 chip: Chip | None = None, seed: int = 0, first: int = 0, pool=None):
        self.program, self.mode, self.seed = program, mode, seed
        # crossbar reads spread over a thread pool's workers (None: this thread)
        self.pool, self.threads = pool, pool._max_workers if pool is not None else 1
        self.chip = chip or dataclasses.replace(Chip(), arch=program.chip)
        # read noise and written operands' noise, keyed by sample (first: this pass's first)
        self.noise = SampleNoise(seed, first) if mode == "analog" else None
        # each instruction's line in the program's text (noise keys, messages), by identity
        self.lines = {id(ins): text_line(program, i) for i, ins in enumerate(program.text)}
        self.stuck: dict[int, np.ndarray] = {}
        self.writes: Counter = Counter()
        self.cell_writes: dict[int, np.ndarray] = {}
        self.last_digits: dict[int, np.ndarray] = {}
        self.last_held: dict[int, np.ndarray] = {}
        written = Counter(ins.attr("xb") for ins in program.text if ins.op == "write")
        self.rewritten = {xb for xb, n in written.items() if n > 1}
        self.cells_changed = 0
        self.failed_cells = 0
        self.ranges = {b.name: b.range for b in program.buffers if b.range}
        self._blob_max: dict[str, float] = {}
        self.blobs = {b.name: b.data for b in program.blobs}
        self._differ: dict[str, bool] = {}  # read_per_sample's blobs
        self.shapes = _shapes(program, scale)
        # the working set of one batched crossbar read (mvm_groups), shared by runs
        # of samples that read at once (fork)
        self.read_budget = BYTES_PER_CHUNK
        self.bufs: dict[str, np.ndarray] = {}
        self.xbars: dict[int, np.ndarray] = {}
        self.halted = False
        self.trimmed = False  # the heap's free pages given back once, after the load phase

    def fork(self, scale: int, first: int, runs: int) -> Machine:
        """A machine for ``scale`` compiled batches from sample ``first`` on, one of ``runs``
        that run at once on their own threads after this one's load phase: it reads this
        one's crossbars (which no later step writes) and has its own buffers, noise, a
        share of the read budget, and no thread pool."""
        part = copy.copy(self)
        part.pool, part.threads = None, 1
        part.noise = SampleNoise(self.seed, first) if self.mode == "analog" else None
        part.shapes, part.bufs = _shapes(self.program, scale), {}
        part.read_budget = self.read_budget // runs
        return part

    def shape(self, ref: str) -> tuple[int, ...]:
        return self.shapes[ref[1:]]

    def read(self, ref: str) -> np.ndarray:
        if ref[0] == "@":
            return self.blobs[ref[1:]]
        try:
            return self.bufs[ref[1:]]
        except KeyError:
            raise RunError(f"{ref} is read before anything was written to it") from None

    def read_per_sample(self, ref: str, rank: int) -> np.ndarray:
        """``read``, but a blob of ``rank`` axes whose rows along the batch are all alike
        (``isa.verify.same_for_every_sample``) as its first row, which broadcasts over a run
        of any number of samples (the verifier does not count it as mixing samples)."""
        value = self.read(ref)
        if ref[0] != "@" or value.ndim != rank:
            return value
        if ref not in self._differ:
            self._differ[ref] = rows_differ(value)
        return value if self._differ[ref] else value[:1]

    def store(self, ref: str, value: np.ndarray) -> None:
        if value.shape != self.shapes[ref[1:]]:
            raise RunError(f"{ref}: result of shape {value.shape} does not match the declared "
                           f"{self.shapes[ref[1:]]}")
        self.bufs[ref[1:]] = value

    def program_xbars(self, writes: list[tuple]) -> None:
        """Write each ``(xb, tile, tensor_max, low)`` in order: crossbar ``xb`` gets ``tile``
        (``low``: bit stucking, ``isa.cells.LowWrite``; ideal mode holds the float tile, a
        view of the immutable blob, and ignores it). The device programming of
        consecutive writes to different crossbars is a function of each write's own inputs
        (noise from per-crossbar streams): it runs as stacks of same-shape tiles
        (``device.program_many``), on the thread pool when there is one, while the
        bookkeeping (write counts, wear, cell states) stays in order."""
        if self.mode == "ideal":
            for xb, tile, *_ in writes:
                self.xbars[xb] = tile
            return
        start = 0
        while start < len(writes):
            end, seen = start, set()
            while end < len(writes) and writes[end][0] not in seen:
                seen.add(writes[end][0])
                end += 1
            # the crossbars from start to end are distinct, so their writes can be prepared
            # a window at a time (inputs, stuck masks included, live for one window only)
            for w0 in range(start, end, STACK * self.threads):
                self._program_window(writes[w0:min(w0 + STACK * self.threads, end)])
            start = end
        if not self.trimmed:  # after the load phase: the temporaries' holes between the
            release_freed_memory()  # cells just kept (later writes reuse what is kept)
            self.trimmed = True

    def _program_window(self, writes: list[tuple]) -> None:
        """Program writes to distinct crossbars: a stack per thread at a time, each recorded
        (and trimmed) before the next, so memory stays a few stacks' worth."""
        if self.mode == "analog":  # new crossbars' stuck cells, a share per thread
            new = np.array([xb for xb, *_ in writes if xb not in self.stuck], np.int64)
            shares = [s for s in np.array_split(new, self.threads) if s.size]
            for xbs, masks in zip(shares, self.map(self._stuck_cells, shares)):
                self.stuck.update(zip(xbs.tolist(), masks))
        stacks = _stacks([self._write_inputs(*w) for w in writes])
        done = iter(writes)
        for i in range(0, len(stacks), self.threads):
            work = stacks[i:i + self.threads]
            for stack, progs in zip(work, self.map(device.program_many, work)):
                for inputs, prog in zip(stack, progs):
                    self._written(next(done)[0], inputs, prog)

    def _write_inputs(self, xb: int, tile: np.ndarray, tensor_max: float,
                      low: cells.LowWrite | None) -> tuple:
        """``device.program``'s arguments for the next write of ``tile`` to ``xb``."""
        self.writes[xb] += 1
        key = None
        win = cells.window(*tile.shape)
        stuck = np.full((2, self.program.chip.slices) + tile.shape, -1, np.int8)
        if self.mode == "analog":
            stuck = self._stuck(xb)[win]
            key = nz.stream_key(self.seed, nz.PROGRAM, xb, self.writes[xb])
        prev, select = None, None
        if xb in self.last_digits:
            prev = (self.last_digits[xb][win], self.last_held[xb][win])
            if low is not None:
                select = low.select(xb, self.writes[xb], prev[0].shape)
        return tile, self.chip, key, stuck, tensor_max, prev, select

    def _written(self, xb: int, inputs: tuple, prog: device.Programmed) -> None:
        """Record a write's effects: cells changed, cell states, wear; hold ``prog``."""
        prev, win = inputs[5], cells.window(*inputs[0].shape)
        # a write with nothing known before it programs every cell (counted, not summed:
        # the load phase writes every crossbar so)
        changed = None if prev is None else prev[0] != prog.target
        self.cells_changed += prog.target.size if changed is None else int(changed.sum())
        if xb in self.rewritten:
            if changed is None:
                changed = np.ones(prog.target.shape, bool)
            self.last_digits.setdefault(xb, cells.blank(self.chip))[win] = prog.target
            self.last_held.setdefault(xb, np.zeros(self.last_digits[xb].shape))[win] = prog.held
            if self.mode == "analog":
                self._wear(xb, win, changed)
        else:  # written once: no later write needs its digits, and one write wears out
            # no cell (endurance is at least 1), so only what reads use is kept (ResNet-50:
            # 1 GB instead of 6)
            prog = dataclasses.replace(prog, target=None, held=None)
            self.stuck.pop(xb, None)  # its stuck cells are in its cells now
        self.xbars[xb] = prog

    def _wear(self, xb: int, win: tuple, changed: np.ndarray) -> None:
        """Count a write on every cell whose digit changed; cells past endurance stick."""
        a = self.program.chip
        counts = self.cell_writes.setdefault(xb, np.zeros((2, a.slices, a.rows,
                                                           a.weights_per_row), np.int64))
        counts[(slice(0, changed.shape[0]),) + win[1:]] += changed
        worn = (counts > self.chip.device.endurance_writes) & (self._stuck(xb) < 0)
        if worn.any():
            self.stuck[xb] = np.where(worn, 0, self.stuck[xb]).astype(np.int8)
            self.failed_cells += int(worn.sum())

    def _stuck(self, xb: int) -> np.ndarray:
        if xb not in self.stuck:
            self.stuck[xb] = self._stuck_cells(np.array([xb]))[0]
        return self.stuck[xb]

    def _stuck_cells(self, xbs: np.ndarray) -> list[np.ndarray]:
        """Crossbars ``xbs``' stuck cells as the chip came (``device.stuck_mask``), each
        its own array."""
        a = self.program.chip
        keys = np.array([nz.stream_key(self.seed, nz.STUCK, xb) for xb in xbs.tolist()])
        masks = device.stuck_mask(keys, (2, a.slices, a.rows, a.weights_per_row), self.chip)
        return [m.copy() for m in masks]  # a crossbar's mask outlives the others

    def blob_max(self, ref: str) -> float:
        """Largest magnitude in a blob (per-tensor weight scaling)."""
        if ref not in self._blob_max:
            self._blob_max[ref] = float(np.abs(self.blobs[ref[1:]]).max(initial=0.0))
        return self._blob_max[ref]

    def input_range(self, ref: str, src: np.ndarray) -> np.ndarray:
        """The DAC's full scale: the calibrated range of the buffer, else each sample's max."""
        if ref[1:] in self.ranges:
            return np.full((src.shape[0], 1, 1), self.ranges[ref[1:]], np.float32)
        peak = np.abs(src).max(axis=(1, 2), keepdims=True)
        return np.where(peak > 0, peak, 1.0)

    def map(self, fn, items: list) -> list:
        """``[fn(item) for item in items]``, on the pool's threads when there is one."""
        if self.pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self.pool.map(fn, items))

    def xbar(self, xb: int, shape, ins: Instr):
        tile = self.xbars.get(xb)
        held = None if tile is None else getattr(tile, "cells", tile).shape[-2:]
        if held != tuple(shape):  # (the verifier rules it out for the programs it reads)
            raise RunError(f"mvm on crossbar {xb} expects a {tuple(shape)} tile, it holds "
                           + ("nothing" if held is None else f"a {held} tile"))
        return tile


def _shapes(program: Program, scale: int) -> dict[str, tuple[int, ...]]:
    """Every buffer's shape with its leading axis times ``scale``."""
    return {b.name: (b.type.shape[0] * scale,) + b.type.shape[1:] if b.type.shape
            else b.type.shape for b in program.buffers}


STACK = 64  # tiles programmed in one stack: amortises numpy's per-call cost, bounds memory


def _stacks(inputs: list[tuple]) -> list[list[tuple]]:
    """``device.program`` argument tuples cut into runs ``device.program_many`` can stack:
    consecutive, the same tile shape, alike in having a previous state, a selection and a
    noise key, at most ``STACK`` long."""
    def kind(a: tuple) -> tuple:
        return a[0].shape, a[2] is None, a[5] is None, a[6] is None
    out: list[list[tuple]] = []
    for a in inputs:
        if out and len(out[-1]) < STACK and kind(out[-1][0]) == kind(a):
            out[-1].append(a)
        else:
            out.append([a])
    return out


def _execute(program: Program, steps: list, feeds: dict[str, np.ndarray], scale: int,
             counts: Counter, mode: str = "ideal", chip: Chip | None = None, seed: int = 0,
             bar=None, first: int = 0, pool=None):
    """Run the planned ``steps`` (``mvm_groups.plan`` of the text; in ideal mode
    ``epilogues.fuse`` of that) once on the samples from
    ``first`` on; return the outputs, how many cells wore out and how many cells writes
    programmed (0 in ideal mode). ``bar``: a progress bar advanced once per step; ``pool``:
    threads for crossbar reads and ideal mode's products."""
    m = Machine(program, scale, mode, chip, seed, first, pool)
    _feed(m, feeds)
    _steps(m, steps, counts, bar)
    return _outputs(m), m.failed_cells, m.cells_changed


def _feed(m: Machine, feeds: dict[str, np.ndarray]) -> None:
    for port in m.program.inputs:
        m.store("%" + port.buffer, feeds[port.name])


def _outputs(m: Machine) -> dict[str, np.ndarray]:
    """The output ports' arrays: float32, or int64 for a port of integers (``ints=1``)."""
    return {p.name: np.rint(m.bufs[p.buffer]).astype(np.int64) if p.ints else m.bufs[p.buffer]
            for p in m.program.outputs}


_RUNNING = threading.local()  # this thread's step, for warnings numpy raises inside it


def running_instruction() -> str | None:
    """"line N (op)" of the step this thread is running (None outside a run): cimrun names
    it in the warnings numpy raises there."""
    return getattr(_RUNNING, "where", None)


def _steps(m: Machine, steps: list, counts: Counter, bar, stop=None) -> None:
    """Run ``steps`` on ``m`` in order, counting their instructions into ``counts``; raise
    ``_Stopped`` before a step once the event ``stop`` is set."""
    try:
        _run_steps(m, steps, counts, bar, stop)
    finally:
        _RUNNING.where = None


def _run_steps(m: Machine, steps: list, counts: Counter, bar, stop) -> None:
    for step in steps:
        if stop is not None and stop.is_set():
            raise _Stopped
        instrs = instructions(step)
        # errors name a Fused step's product, a ConvStep's im2col (whose input it reads)
        ins = step.group[0] if isinstance(step, Fused) else instrs[0]
        _RUNNING.where = f"line {m.lines[id(ins)]} ({ins.op})"
        try:
            if isinstance(step, GraphStep):
                run_graph(m, step)
            elif isinstance(step, ConvStep):
                run_conv(m, step)
            elif isinstance(step, Fused):
                run_fused(m, step)
            elif isinstance(step, list):
                (write_group if ins.op == "write" else execute_group)(m, step)
            else:
                SEMANTICS[ins.op](m, ins)
        except RunError as exc:
            raise RunError(f"line {m.lines[id(ins)]} ({ins.op}): {exc}") from None
        except (ValueError, IndexError, TypeError) as exc:  # a program the checks let through
            raise RunError(f"line {m.lines[id(ins)]} ({ins.op}): cannot execute: {exc}"
                           ) from None
        counts.update(i.op for i in instrs)
        if bar is not None:
            bar.update()
        if m.halted:
            break


def _is_write(step) -> bool:
    return isinstance(step, list) and step[0].op == "write"


def _load_phase(steps: list) -> int | None:
    """How many leading steps are crossbar writes and barriers (the load phase), when no
    later step writes a crossbar; else None (the program reprograms during inference)."""
    k = 0
    while k < len(steps) and (_is_write(steps[k]) or getattr(steps[k], "op", "") == "barrier"):
        k += 1
    return None if any(_is_write(s) for s in steps[k:]) else k


# Ideal mode forks a pass only when it holds this many samples a thread: a few samples'
# large products (ResNet-50's) run on all cores anyway (intgemm.sgemm), and each run
# assembles its own matrices from the crossbars
SPLIT_SAMPLES = 32


class _Stopped(Exception):
    """A forked run stopped early because another failed or the run was interrupted."""


def _pass(program: Program, steps: list, feeds: dict[str, np.ndarray], scale: int,
          counts: Counter, mode: str, chip: Chip | None, seed: int, bar, first: int, pool,
          threads: int):
    """``_execute`` one pass of ``scale`` compiled batches, on ``pool``'s ``threads`` threads
    (ours replacing BLAS's own: both at once would oversubscribe the cores): forked into
    runs of samples (``_runs_of_samples``, ``_forked``) where it can, else quantized and
    analog modes share each crossbar read out (``mvm_groups``), and ideal mode runs as one
    pass, its products' rows shared out, BLAS on all cores."""
    load = _load_phase(steps)
    runs = _runs_of_samples(program, load, scale, mode, threads) if pool else None
    if runs is None and (pool is None or mode == "ideal"):  # ideal: products share rows out
        return _execute(program, steps, feeds, scale, counts, mode, chip, seed, bar, first,
                        pool)
    with _blas_controller().limit(limits=1, user_api="blas"):
        if runs is None:
            return _execute(program, steps, feeds, scale, counts, mode, chip, seed, bar,
                            first, pool)
        return _forked(program, steps, feeds, scale, counts, mode, chip, seed, bar, first,
                       pool, runs, load)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """threadpoolctl's view of the loaded BLAS libraries, found once (finding them reads
    this process's memory map: about 1 ms a run); numpy's, loaded on import, are all
    there is to limit."""
    return ThreadpoolController()


def _runs_of_samples(program: Program, load: int | None, scale: int, mode: str,
                     threads: int) -> list[tuple[int, int]] | None:
    """The even runs of compiled batches, one a thread, that a pass of ``scale`` batches
    forks into; None where it does not: a program that writes crossbars after its load
    phase (``load`` None, ``_load_phase``), fewer batches than threads (the threads share
    reads out instead), and in ideal mode fewer than ``SPLIT_SAMPLES`` samples a thread."""
    if load is None or scale < threads:
        return None
    if mode == "ideal" and scale * program.batch < SPLIT_SAMPLES * threads:
        return None
    return even_runs(scale, threads)


def _forked(program: Program, steps: list, feeds: dict[str, np.ndarray], scale: int,
            counts: Counter, mode: str, chip: Chip | None, seed: int, bar, first: int, pool,
            runs: list[tuple[int, int]], load: int):
    """Program the crossbars once (the ``load`` leading steps), then run each of ``runs``
    (compiled batches) through the rest of the program on a fork of the machine (``Machine.fork``),
    on the pool. A sample's arithmetic and noise are its own, so the split changes no
    result; ``counts`` and ``bar`` follow the first run, as for one pass. An error in one
    run, or an interrupt, stops the others at their next step; the first error is raised."""
    b = program.batch
    m = Machine(program, scale, mode, chip, seed, first, pool)
    _steps(m, steps[:load], counts, bar)  # programming: stacks on the pool's threads
    stop = threading.Event()

    def one(k: int) -> dict[str, np.ndarray]:
        s0, s1 = runs[k]
        part = m.fork(s1 - s0, first + s0 * b, len(runs))
        _feed(part, {name: x[s0 * b:s1 * b] for name, x in feeds.items()})
        _steps(part, steps[load:], counts if k == 0 else Counter(), bar if k == 0 else None,
               stop)
        return _outputs(part)
    futures = [pool.submit(one, k) for k in range(len(runs))]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:  # an error or an interrupt: the other runs stop at their next step
        stop.set()
    wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise next(e for e in errors if not isinstance(e, _Stopped))
    done = [f.result() for f in futures]
    outputs = {name: _join([d[name] for d in done], name) for name in done[0]}
    return outputs, m.failed_cells, m.cells_changed


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    """A progress bar on stderr, shown only on a terminal and only for runs longer than 2 s."""
    return tqdm(total=total, desc=desc, unit="step", delay=2.0, leave=False,
                disable=None if enabled else True)


def _join(parts: list[np.ndarray], name: str) -> np.ndarray:
    """Outputs of successive passes of the compiled batch, along the batch axis."""
    if parts[0].ndim == 0:
        raise RunError(f"output {name!r} is a scalar, so its samples cannot be joined: run "
                       "one compiled batch at a time")
    return np.concatenate(parts)


def _check_joinable(program: Program, groups: int) -> None:
    """A program that is not batch-free runs more samples than compiled as passes of its
    batch, each pass a batch of its own, joined along each output's first axis. Before any
    pass: warn where an instruction mixes the samples of a batch (a sum, a softmax or an
    ArgMax over them: a model of a fixed batch wants exactly that, one of any batch
    another number), and refuse an output whose first axis is not the samples'."""
    if program.batch_free or groups < 2:
        return
    mixing = sample_mixing(program)
    if mixing:
        warnings.warn(f"{mixing}: {groups * program.batch} samples run as {groups} passes of "
                      f"the compiled batch of {program.batch}, each pass a batch of its own; "
                      "compile with --batch set to the run's samples for one batch of all",
                      RuntimeWarning, stacklevel=3)
    buffers = program.buffer_map()
    for port in program.outputs:
        shape = buffers[port.buffer].type.shape
        if shape and shape[0] != program.batch:
            raise RunError(f"output {port.name!r} does not keep the samples on its first axis "
                           f"(shape {list(shape)} for a compiled batch of {program.batch}), so "
                           f"passes of {program.batch} cannot be joined: run {program.batch} "
                           "sample(s) at a time, or compile with --batch set to the run's "
                           "samples")


def _check_dtype(port, x: np.ndarray) -> None:
    """Float data for a float port; for a boolean port, booleans (or 0 and 1); for a
    token-id port, integers in [0, ids); for an integer port, integers within 2**24 (float32
    holds them exactly)."""
    if port.bools:
        if x.dtype != np.bool_ and not np.isin(x, (0, 1)).all():
            raise RunError(f"input {port.name!r} is boolean: give a bool array (or 0 and 1), "
                           f"got {x.dtype} values other than 0 and 1")
        return
    if port.ints:
        if not np.issubdtype(x.dtype, np.integer):
            raise RunError(f"input {port.name!r} holds integers: it must be an integer array "
                           f"(int64), got {x.dtype}")
        if x.size and np.abs(x).max() > 2 ** 24:
            raise RunError(f"input {port.name!r} holds integers beyond 2**24, which the chip's "
                           "float32 buffers cannot hold exactly")
        return
    if not port.ids:
        if not np.issubdtype(x.dtype, np.floating):
            raise RunError(f"input {port.name!r} has dtype {x.dtype}; expected float32")
        return
    if not np.issubdtype(x.dtype, np.integer):
        raise RunError(f"input {port.name!r} holds token ids: it must be an integer array "
                       f"(int64), got {x.dtype}")
    bad = (x < 0) | (x >= port.ids)
    if bad.any():
        raise RunError(f"input {port.name!r}: {int(bad.sum())} token id(s) outside the "
                       f"vocabulary [0, {port.ids}) (the first: {int(x[bad][0])})")


def _disagreeing_batches(ports, inputs: dict, buffers: dict) -> str:
    """The message for inputs that hold different numbers of compiled batches."""
    given = ", ".join(f"{q.name} {list(np.shape(inputs[q.name]))}" for q in ports)
    compiled = ", ".join(f"{q.name} {list(buffers[q.buffer].type.shape)}" for q in ports)
    return (f"inputs disagree on the number of compiled batches they hold: {given}, compiled "
            f"for {compiled}; an input without a batch axis (a mask shared by every sample) "
            "needs the run's sample count compiled in (cimc --batch N)")


def check_inputs(program: Program, inputs, allow_nonfinite: bool = False,
                 source: str = "") -> tuple[dict[str, np.ndarray], int]:
    """Validate user inputs (``source``: their file, for messages); return them as float32
    arrays (token ids and other integers as int64) and the number of compiled batches they
    hold. NaN or Inf is
    an error unless ``allow_nonfinite``."""
    ports = program.inputs
    if isinstance(inputs, np.ndarray):
        if len(ports) != 1:
            raise RunError(f"the program has {len(ports)} inputs "
                           f"({', '.join(p.name for p in ports)}); pass them by name (.npz)")
        inputs = {ports[0].name: inputs}
    missing = [p.name for p in ports if p.name not in inputs]
    if missing:
        raise RunError(f"missing input(s): {', '.join(missing)}; the program takes "
                       f"{', '.join(p.name for p in ports)}")
    buffers = program.buffer_map()
    feeds, samples = {}, None
    for p in ports:
        x = np.asarray(inputs[p.name])
        want = buffers[p.buffer].type.shape
        _check_dtype(p, x)
        if want and x.ndim == len(want) and x.shape[0] == 0 and want[0] > 0:
            where = f" ({source})" if source else ""
            raise RunError(f"input {p.name!r}{where} holds no samples (shape "
                           f"{list(x.shape)}); give at least {want[0]}")
        ok = x.shape == want or (len(want) >= 1 and x.ndim == len(want)
                                 and x.shape[1:] == want[1:] and want[0] > 0
                                 and x.shape[0] % want[0] == 0)
        if not ok:
            raise RunError(f"input {p.name!r} has shape {list(x.shape)}; the program was compiled "
                           f"for {list(want)} (a multiple of the leading batch "
                           f"dimension {want[0] if want else 1} also works)")
        n = x.shape[0] // want[0] if want and want[0] and x.shape != want else 1
        if samples is not None and n != samples:
            raise RunError(_disagreeing_batches(ports, inputs, buffers))
        samples, feeds[p.name] = n, x.astype(np.int64 if p.ids or p.ints else np.float32)
        bad = 0 if allow_nonfinite else int(np.size(x) - np.isfinite(feeds[p.name]).sum())
        if bad:
            where = f" ({source})" if source else ""
            raise RunError(f"input {p.name!r}{where} holds {bad} NaN or infinite value(s) "
                           "(after conversion to float32); pass --allow-nonfinite to run "
                           "them anyway")
    return feeds, samples or 1


def _mb(nbytes: float) -> str:
    """Megabytes to three significant digits (0.4, 258, 1,520)."""
    mb = nbytes / 2 ** 20
    return f"{mb:,.0f}" if mb >= 100 else f"{mb:.3g}"


def chunk_batches(program: Program, groups: int, mode: str,
                  memory_limit: int | None = None, runs: int = 1) -> int:
    """Compiled batches one pass runs: all ``groups`` when they fit, else as many as fit
    ``memory_limit`` bytes (None: what this process may still allocate), by
    ``memory.estimate_bytes`` for passes of up to ``runs`` runs at once; one when the
    program is not batch free. RunError when not even one fits."""
    def fits(k: int) -> bool:
        need = estimate_bytes(program, k * program.batch, mode, runs)
        return need <= memory_limit if memory_limit else memory_problem(need, "") is None
    if not fits(1):
        need = estimate_bytes(program, program.batch, mode, runs)
        if memory_limit:
            raise RunError(f"--mode {mode} needs about {_mb(need)} MB for one compiled "
                           f"batch, over --memory-limit {_mb(memory_limit)} MB")
        check_memory(need, f"--mode {mode} on {program.batch} sample(s)")
    if not program.batch_free:
        return 1
    low, high = 1, groups  # the most that fit lies in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def _run_chip(program: Program, chip) -> Chip:
    """The chip a run simulates: ``chip`` (``isa.chip.chip_of``: a Chip, a preset name or a
    TOML path; None: the default) with the program's geometry, which was fixed when it was
    compiled (a preset's or a config's own geometry is not the run's to change:
    ``runtime.chips.resolve`` checks a file's against it for cimrun)."""
    try:
        chip = chip_of(chip)
    except IsaError as exc:
        raise RunError(str(exc)) from None
    return dataclasses.replace(chip or Chip(), arch=program.chip)


# mitigations that need the verify reads of program-and-verify (README, "Mitigations")
VERIFY_DRIVEN = ("stuck_aware", "slice_compensation", "raw_calibration")


def _warn_unverified(chip: Chip) -> None:
    """A warning for mitigations left on where the chip has no verify reads to drive them."""
    on = [k for k in VERIFY_DRIVEN if getattr(chip.mapping, k)]
    if chip.timing.t_verify_ns == 0 and on:
        warnings.warn(f"the chip has no verify reads (timing.t_verify_ns = 0), but "
                      f"{', '.join('mapping.' + k for k in on)} need them: the accuracy is "
                      f"optimistic (--set mapping.NAME=0 for an open-loop chip)",
                      RuntimeWarning, stacklevel=3)


def _warn_offset_bits(program: Program, chip: Chip) -> None:
    """A warning where the offset scheme's sign costs a program's crossbar weights a
    magnitude bit; a RunError where it leaves none."""
    if not cells.offset_bits_lost(chip) or \
            not any(i.op in ("write", "wbmm") for i in program.text):
        return
    a = chip.arch
    held = a.cell_bits * a.slices
    what = (f"mapping.differential = 0 at {a.weight_bits}-bit weights and {a.cell_bits}-bit "
            f"cells: {a.slices} slice(s) hold {held} bit(s), the magnitude and not the offset "
            "scheme's sign")
    if cells.magnitude_max(chip) < 1:
        raise RunError(f"{what}, so no magnitude bit is left: use differential pairs "
                       "(mapping.differential = 1), or compile with more bits a weight or "
                       "a cell")
    warnings.warn(f"{what}, so its weights are rounded to {held} bits (differential pairs "
                  f"keep {a.weight_bits})", RuntimeWarning, stacklevel=3)


def _integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_run_args(seed, threads, memory_limit, first_sample) -> None:
    """The run's seed, threads, memory limit and first sample, as cimrun's flags check
    them."""
    if not _integer(seed) or not 0 <= seed < 2 ** 64:
        raise RunError(f"seed {seed!r}: must be an integer within 0..2**64 - 1")
    if not _integer(threads) or threads < 1:
        raise RunError(f"threads {threads!r}: must be at least 1 (None: one per core)")
    if memory_limit is not None and (not isinstance(memory_limit, (int, float, np.number))
                                     or isinstance(memory_limit, bool)
                                     or not memory_limit > 0):
        raise RunError(f"memory_limit {memory_limit!r}: must be a positive number of bytes "
                       "(None: what the machine has)")
    if not _integer(first_sample):
        raise RunError(f"first_sample {first_sample!r}: must be an integer")


def run(program: Program, inputs=None, mode: str = "ideal", seed: int = 0,
        chip: Chip | None = None, timing: bool = True, allow_nonfinite: bool = False,
        progress: bool = False, memory_limit: int | None = None,
        first_sample: int = 0, threads: int | None = 1) -> RunResult:
    """Run ``program`` on ``inputs`` (an array, or a dict by input name) and, with ``timing``,
    simulate its timing and energy on ``chip`` (default: the default chip with the program's
    geometry; a preset name or TOML path also works; the geometry is always the
    program's). Mode ``timing`` skips the arithmetic. NaN/Inf inputs are an error unless
    ``allow_nonfinite``. ``progress``: a progress bar on a terminal for long runs. The samples
    run in passes that fit ``memory_limit`` bytes (``chunk_batches``); noise is keyed by
    sample (``runtime.noise``): ``first_sample`` is the index of the first input sample in
    its dataset, so that a dataset split into runs gives the outputs of one run over all of
    it, and the outputs never depend on how the samples are split into passes.
    ``threads``: that many threads (None: one per core), each running a run of a pass's
    samples, or sharing its crossbar reads out (``_pass``); the outputs are the same for
    any number. Runs set this process's malloc to keep
    a pass's worth of freed memory for reuse (``memory.keep_freed_memory``). Raises
    RunError."""
    if mode not in MODES:
        raise RunError(f"mode {mode!r} is not available; choose from {', '.join(MODES)}")
    chip = _run_chip(program, chip)
    threads = (os.cpu_count() or 1) if threads is None else threads
    _check_run_args(seed, threads, memory_limit, first_sample)
    seed, threads, first_sample = int(seed), int(threads), int(first_sample)
    if mode != "timing" and inputs is None:
        raise RunError(f"--mode {mode} needs inputs (only timing mode runs without them)")
    if mode == "analog":  # (quantized mode draws no noise and has no stuck cells)
        _warn_unverified(chip)
    if mode in ("quantized", "analog"):
        _warn_offset_bits(program, chip)
    if mode != "timing":
        feeds, groups = check_inputs(program, inputs, allow_nonfinite)
        if not 0 <= first_sample <= 2 ** 63 - 1 - groups * program.batch:
            raise RunError(f"first_sample {first_sample}: the samples' indices must lie within "
                           "0..2**63 - 1 (they key the noise streams)")
        _check_joinable(program, groups)
        per = chunk_batches(program, groups, mode, memory_limit, threads)
    timing_stats, timeline = timing_report(program, chip) if timing else ({}, None)
    if mode == "timing":
        return RunResult({}, {"mode": mode, "seed": seed, **timing_stats,
                              "chip": chip.to_dict()}, timeline)
    keep_freed_memory(estimate_bytes(program, per * program.batch, mode, threads))
    counts: Counter = Counter()
    start = time.perf_counter()
    steps, b = plan(program.text), program.batch
    if mode == "ideal":
        steps = fuse_convs(fuse(steps, program), program)
        if not allow_nonfinite:  # (onnxruntime's max pools skip a NaN the program's keep)
            steps = fuse_graphs(steps, program)
    chunks = [(i, min(per, groups - i)) for i in range(0, groups, per)]
    def take(i: int, n: int) -> dict:  # one pass's inputs (all of them: no batch to slice)
        return feeds if len(chunks) == 1 else {k: v[i * b:(i + n) * b] for k, v in feeds.items()}
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        with _progress(len(chunks) * len(steps), f"cimrun {mode}", progress) as bar:
            parts = [_pass(program, steps, take(i, n), n, counts, mode, chip, seed, bar,
                           first_sample + i * b, pool, threads) for i, n in chunks]
    finally:
        if pool is not None:
            pool.shutdown()
    outputs = parts[0][0] if len(parts) == 1 else \
        {k: _join([p[0][k] for p in parts], k) for k in parts[0][0]}
    # each pass replays the program's writes on the same fresh chip (their noise keyed by
    # crossbar and write number), shared by its samples: the counts are one replay's, so
    # they do not depend on how the run is split into passes
    failed, changed = max(p[1] for p in parts), max(p[2] for p in parts)
    seconds = time.perf_counter() - start
    stats = {"mode": mode, "seed": seed, "samples": groups * program.batch,
             "passes": len(chunks),
             "endurance_failed_cells": failed,
             "cells_changed": changed if mode != "ideal" else None,
             "compiled_batch": program.batch, "instructions": sum(counts.values()),
             "wall_seconds": seconds, "opcode_counts": dict(sorted(counts.items())),
             **timing_stats, "chip": chip.to_dict()}
    return RunResult(outputs, stats, timeline)
