"""The crossbar arithmetic against its frozen reference (issue 14, point 5): whatever makes
``runtime.analog.tiles_mvm`` faster must keep its results bit for bit, in quantized mode and,
given the same noise draws, in analog mode (``tests/oracle/analog_reference.py`` is the
implementation as it was before any speed-up, never to be edited)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from oracle import analog_reference

from isa.chip import Chip, ChipGeometry
from runtime import analog, device, kernels


def _chip(cell_bits: int, dac_bits: int, adc_per_step: int, differential: int,
          adc_bits: int = 8) -> Chip:
    arch = dataclasses.replace(ChipGeometry(), rows=32, cols=8 * 8 // cell_bits,
                               cell_bits=cell_bits, dac_bits=dac_bits,
                               adc_per_step=adc_per_step, adc_bits=adc_bits)
    chip = Chip()
    return dataclasses.replace(chip, arch=arch, mapping=dataclasses.replace(
        chip.mapping, differential=differential))


def _tiles(chip: Chip, analog_mode: bool, rng: np.random.Generator, count: int = 3):
    """``count`` programmed tiles of different shapes (padding exercised), stuck cells on."""
    a = chip.arch
    progs = []
    for t in range(count):
        r, c = a.rows - 5 * t, a.weights_per_row - t
        tile = rng.standard_normal((r, c)).astype(np.float32)
        stuck_key, noise_key = rng.integers(2 ** 63, size=2, dtype=np.uint64)
        stuck = device.stuck_mask(stuck_key, (2, a.slices, r, c), chip) if analog_mode else \
            np.full((2, a.slices, r, c), -1, np.int8)
        progs.append(device.program(tile, chip, noise_key if analog_mode else None, stuck,
                                    float(np.abs(tile).max())))
    return progs


def _inputs(chip: Chip, tiles: int, rng: np.random.Generator, per_tile_range: bool):
    x = rng.standard_normal((tiles, 7, chip.arch.rows)).astype(np.float32)
    x[:, 2] = np.maximum(x[:, 2], 0)          # a vector with no negative part
    x[:, 3] = 0                               # and an all-zero one
    x[:, :, -4:] = 0                          # padding rows
    peak = np.abs(x).max(axis=(0, 2))[:, None] + 1e-3
    ranges = np.broadcast_to(peak[None], (tiles,) + peak.shape).copy() * (
        1 + np.arange(tiles))[:, None, None] if per_tile_range else 0.8 * peak
    return x, ranges.astype(np.float32)


def _noise(seed: int):
    """The same read-noise draws for both implementations, call by call."""
    def draws(part: int, shape: tuple) -> np.ndarray:
        return np.random.default_rng([seed, part, *shape]).standard_normal(shape,
                                                                           dtype=np.float32)
    return draws


GEOMETRIES = [(c, d, s, diff) for c in (1, 2, 4) for d in (1, 2, 8) for s in (1, 0)
              for diff in (1, 0)]


@pytest.mark.parametrize("cell_bits,dac_bits,adc_per_step,differential", GEOMETRIES)
@pytest.mark.parametrize("mode", ["quantized", "analog"])
@pytest.mark.parametrize("implementation", ["numba", "numpy"])
def test_tiles_mvm_matches_the_frozen_reference(cell_bits, dac_bits, adc_per_step,
                                                differential, mode, implementation,
                                                monkeypatch):
    """Both implementations of the read's digital side (``runtime.kernels``)."""
    if implementation == "numpy":
        monkeypatch.setattr(kernels, "_kernel", None)
    elif kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    chip = _chip(cell_bits, dac_bits, adc_per_step, differential)
    rng = np.random.default_rng([cell_bits, dac_bits, adc_per_step, differential])
    progs = _tiles(chip, mode == "analog", rng)
    for per_tile_range in (False, True):
        x, ranges = _inputs(chip, len(progs), rng, per_tile_range)
        noise = _noise(7) if mode == "analog" else None
        want = analog_reference.tiles_mvm(x, ranges, progs, chip, noise)
        got = analog.tiles_mvm(x, ranges, progs, chip, noise)
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_the_oracle_is_not_vacuous():
    """The reference computes something that depends on what it is given: ADC bits change
    its quantized result, and noise its analog one."""
    rng = np.random.default_rng(0)
    chip = _chip(2, 1, 1, 1)
    progs = _tiles(chip, False, rng)
    x, ranges = _inputs(chip, len(progs), rng, False)
    fine = analog_reference.tiles_mvm(x, ranges, progs, chip, None)
    coarse = analog_reference.tiles_mvm(x, ranges, progs, _chip(2, 1, 1, 1, adc_bits=3), None)
    noisy = analog_reference.tiles_mvm(x, ranges, progs, chip, _noise(1))
    assert not np.array_equal(fine, coarse) and not np.array_equal(fine, noisy)
    assert np.abs(fine).max() > 0 and np.array_equal(fine[:, 3], np.zeros_like(fine[:, 3]))


@pytest.mark.parametrize("mode", ["quantized", "analog"])
def test_reading_in_blocks_of_rows_changes_nothing(mode, monkeypatch):
    """``tiles_mvm`` reads blocks of tiles x rows (``BLOCK_BYTES``); blocks of one tile and
    one row give the frozen reference's result too."""
    monkeypatch.setattr(analog, "BLOCK_BYTES", 1)  # one tile, one row a block
    monkeypatch.setattr(analog, "MIN_BLOCK_ROWS", 1)
    chip = _chip(2, 1, 1, 1)
    rng = np.random.default_rng(5)
    progs = _tiles(chip, mode == "analog", rng)
    x, ranges = _inputs(chip, len(progs), rng, True)
    noise = _noise(3) if mode == "analog" else None
    want = analog_reference.tiles_mvm(x, ranges, progs, chip, noise)
    assert np.array_equal(analog.tiles_mvm(x, ranges, progs, chip, noise), want)


@pytest.mark.parametrize("mode", ["quantized", "analog"])
@pytest.mark.parametrize("implementation", ["numba", "numpy"])
@pytest.mark.parametrize("block_bytes", [analog.BLOCK_BYTES, 1])
def test_tiles_that_share_an_input_read_it_as_if_each_had_its_own(mode, implementation,
                                                                 block_bytes, monkeypatch):
    """``tiles_mvm``'s ``inputs``: tiles reading one input (quantized once, one product for
    all) give the reference's result for that input repeated per tile, in blocks too."""
    if implementation == "numpy":
        monkeypatch.setattr(kernels, "_kernel", None)
    elif kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    monkeypatch.setattr(analog, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(analog, "MIN_BLOCK_ROWS", 1 if block_bytes == 1 else 256)
    chip = _chip(2, 1, 1, 1)
    rng = np.random.default_rng(9)
    progs = _tiles(chip, mode == "analog", rng, count=4)
    x, ranges = _inputs(chip, 2, rng, False)
    inputs = [1, 0, 1, 1]
    noise = _noise(4) if mode == "analog" else None
    want = analog_reference.tiles_mvm(x[inputs], ranges, progs, chip, noise)
    got = analog.tiles_mvm(x, ranges, progs, chip, noise, inputs)
    assert np.array_equal(got, want)


def test_per_tile_ranges_need_an_input_per_tile():
    chip = _chip(2, 1, 1, 1)
    rng = np.random.default_rng(2)
    progs = _tiles(chip, False, rng, count=2)
    x, ranges = _inputs(chip, 2, rng, True)
    with pytest.raises(ValueError, match="one input per tile"):
        analog.tiles_mvm(x[:1], ranges, progs, chip, None, [0, 0])


def test_analog_cells_sum_exactly_in_float32_and_so_give_float64s_result(monkeypatch):
    """Analog cells are on the device grid (``device.on_grid``): with 1- and 2-bit DAC
    digits their column sums fit float32 exactly and the product runs in float32; with an
    8-bit DAC, or off the grid (quantized mode's Gmin), it stays float64 (an 8-bit DAC's
    digits go through integer products where those run). Forcing float64 changes no
    bit."""
    rng = np.random.default_rng(11)
    chip = _chip(2, 1, 1, 1)
    progs = _tiles(chip, True, rng)
    scaled = np.concatenate([p.cells.ravel() for p in progs]) * 2.0 ** device.GRID_BITS
    assert np.array_equal(scaled, np.rint(scaled))
    assert not np.array_equal(scaled % 2 ** device.GRID_BITS, 0 * scaled)  # noise: off levels
    assert analog.float32_exact(progs, 1) and analog.float32_exact(progs, 3)
    assert not analog.float32_exact(progs, 255)  # 8-bit DAC digits: sums may not fit
    assert not analog.float32_exact(_tiles(chip, False, rng), 1)  # Gmin is off the grid
    off = [dataclasses.replace(p, grid_bound=None) for p in progs]
    assert not analog.float32_exact(off, 1)
    cells, full, gain, _ = analog._stack(progs)
    idx = np.arange(len(progs))
    assert analog._TileGroup(idx, cells, full, gain, progs, chip).g.dtype == np.float32
    assert analog._TileGroup(idx, cells, full, gain, off, chip).g.dtype == np.float64
    x, ranges = _inputs(chip, len(progs), rng, False)
    fast = analog.tiles_mvm(x, ranges, progs, chip, _noise(2))
    assert np.array_equal(fast, analog.tiles_mvm(x, ranges, off, chip, _noise(2)))
    assert np.array_equal(fast, analog_reference.tiles_mvm(x, ranges, progs, chip, _noise(2)))
    one_pass = _chip(2, 8, 0, 1)  # the one-pass corner's 8-bit digits
    if kernels.compiled():
        assert analog._TileGroup(idx, cells, full, gain, progs, one_pass).twice is not None
    monkeypatch.setattr(analog, "INTEGER_PRODUCTS", False)
    assert analog._TileGroup(idx, cells, full, gain, progs, one_pass).g.dtype == np.float64


@pytest.mark.parametrize("digit", [1, 3, 255])
def test_float32_sums_are_exact_up_to_the_bound(digit):
    """At the bound's edge (columns of on-grid cells summing to just under 2**24 units at
    the largest digit), float32 products give float64's sums bit for bit, for any batch
    shape; one unit more and ``float32_exact`` refuses."""
    unit, rows = 2.0 ** -device.GRID_BITS, 128
    largest = (2 ** 24 - 1) // (digit * rows)  # grid units: rows x largest x digit < 2**24
    rng = np.random.default_rng(digit)
    g = (rng.integers(largest // 2, largest + 1, (rows, 40)) * unit).astype(np.float32)
    g[:, 0] = largest * unit  # a column at the bound itself
    prog = device.Programmed(g[None, None], None, np.ones(40), np.ones((1, 1, 40), np.float32),
                             np.ones((1, 1, 40), np.float32), 0.0,
                             grid_bound=float(g.max()) * rows / unit)
    assert analog.float32_exact([prog], digit)
    assert not analog.float32_exact([dataclasses.replace(prog, grid_bound=2 ** 24 / digit)],
                                    digit)
    planes = rng.integers(0, digit + 1, (3000, rows)).astype(np.float32)
    planes[0] = digit  # every row at the largest digit
    want = (planes.astype(np.float64) @ g.astype(np.float64)).astype(np.float32)
    assert 2 ** 24 - 1 - digit * rows < want[0, 0] / unit < 2 ** 24  # the edge is reached
    for n0, n1 in ((0, 3000), (0, 1), (5, 37), (100, 2100)):
        assert np.array_equal(planes[n0:n1] @ g, want[n0:n1])
