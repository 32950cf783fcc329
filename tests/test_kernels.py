"""The crossbar read's compiled kernel against its numpy twin, and the counter-based read
noise (issue 14): the kernel must give the numpy implementation's results bit for bit, and
the noise must be N(0, 1) and the same wherever it is computed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import MODELS, model_path

from compiler import compile_model
from runtime import intgemm, kernels, run
from runtime import noise as nz

needs_numba = pytest.mark.skipif(kernels.numba is None or kernels._kernel is None,
                                 reason="numba is not installed (or CIMSTACK_NUMBA=0)")


def _case(rng, per_step: int, signs: int, steps: int = 4, tiles: int = 3, rows: int = 10,
          slices: int = 2, cols: int = 5, vectors: int = 2):
    """A read with currents spanning below zero to beyond full scale (the ADC clips both)."""
    shape = (steps, tiles, rows, signs, slices, cols)
    full32 = rng.uniform(20, 60, (tiles, signs, slices, cols)).astype(np.float32)
    step_w = 2.0 ** np.arange(steps)
    if per_step:
        full, lsb = full32.astype(np.float64), (full32 / 255).astype(np.float64)
    else:
        full = full32 * step_w.sum()
        lsb = full / 255
    active = rng.integers(0, 9, shape[:3]).astype(np.float32)
    current = rng.uniform(-5, 70, shape)
    current[active == 0] = 0.0  # a step that applies no input has no current
    return dict(
        current=current, active=active, full=full, lsb=lsb,
        gain=rng.uniform(0.9, 1.1, full32.shape).astype(np.float32),
        offsets=rng.uniform(0, 3, tiles), slice_w=4.0 ** np.arange(slices), step_w=step_w,
        g0=0.37, levels=255, per_step=per_step, sign=-1.0, sigma=0.05), vectors


@needs_numba
@pytest.mark.parametrize("per_step", [1, 0])
@pytest.mark.parametrize("signs", [2, 1])
@pytest.mark.parametrize("noise", ["none", "streams", "draws"])
def test_kernel_matches_numpy_bit_for_bit(per_step, signs, noise):
    rng = np.random.default_rng([per_step, signs, len(noise)])
    case, vectors = _case(rng, per_step, signs)
    shape = case["current"].shape
    keys = rng.integers(0, 2 ** 63, (shape[1], shape[2] // vectors), dtype=np.uint64)
    draw = {"none": None, "streams": kernels.Streams(keys, vectors),
            "draws": rng.standard_normal(shape).astype(np.float32)}[noise]
    outs = []
    for implementation in ("numba", "numpy"):
        out = np.full((shape[1], shape[2], shape[5]), 0.25)  # read_pass adds into out
        kernels.read_pass(**case, noise=draw, out=out, implementation=implementation)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    quiet = np.full_like(outs[0], 0.25)
    kernels.read_pass(**case, noise=None, out=quiet, implementation="numpy")
    assert (noise == "none") == np.array_equal(outs[0], quiet)  # noise does something


@needs_numba
@pytest.mark.parametrize("per_step", [1, 0])
@pytest.mark.parametrize("signs", [2, 1])
def test_kernel_matches_numpy_with_padded_tiles(per_step, signs):
    """Tiles narrower than the read (padding columns carry no current and draw nothing)
    number their draws by their own width: the kernel's padded path against numpy's, and
    a tile without padding against the same tile read alone."""
    rng = np.random.default_rng([per_step, signs])
    case, vectors = _case(rng, per_step, signs)
    shape = case["current"].shape
    widths = np.array([shape[5], shape[5] - 2, 1])
    own = np.arange(shape[5])[None, :] < widths[:, None]  # [T, C]: each tile's own columns
    case["current"] *= own[None, :, None, None, None, :]
    keys = rng.integers(0, 2 ** 63, (shape[1], shape[2] // vectors), dtype=np.uint64)
    streams = kernels.Streams(keys, vectors, 0, widths)
    outs = []
    for implementation in ("numba", "numpy"):
        out = np.zeros((shape[1], shape[2], shape[5]))
        kernels.read_pass(**case, noise=streams, out=out, implementation=implementation)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    alone = {k: (v[:, :1] if k in ("current", "active") else v[:1] if k in (
        "full", "lsb", "gain", "offsets") else v) for k, v in case.items()}
    out = np.zeros((1, shape[2], shape[5]))
    kernels.read_pass(**alone, noise=kernels.Streams(keys[:1], vectors), out=out)
    assert np.array_equal(out[0], outs[0][0])


def test_streams_are_what_read_pass_draws():
    """With streams, read_pass's noise is stream_normals at the documented counters: passing
    those draws as an array gives the same result (numpy and, if present, numba)."""
    rng = np.random.default_rng(3)
    case, vectors = _case(rng, 1, 2)
    steps, tiles, rows, signs, slices, cols = case["current"].shape
    keys = rng.integers(0, 2 ** 63, (tiles, rows // vectors), dtype=np.uint64)
    b, t, n, s, q, c = np.indices(case["current"].shape)
    counters = (((b * vectors + n % vectors) * signs + s) * slices + q) * cols + c
    draws = nz.stream_normals(keys[t, n // vectors], counters)
    implementations = ["numpy"] + (["numba"] if kernels._kernel is not None else [])
    for implementation in implementations:
        got, want = np.zeros((tiles, rows, cols)), np.zeros((tiles, rows, cols))
        kernels.read_pass(**case, noise=kernels.Streams(keys, vectors), out=got,
                          implementation=implementation)
        kernels.read_pass(**case, noise=draws, out=want, implementation=implementation)
        assert np.array_equal(got, want)


@needs_numba
def test_compiled_normals_equal_numpy_ones_tails_included():
    """Every branch of the bits-to-normal map: ordinary intervals, the tail's (its top 14
    bits all ones), both signs, and the extremes of the fraction."""
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2 ** 64, 20000, dtype=np.uint64, endpoint=False)
    tail = h | np.uint64(((2 ** 14 - 1) << 49))
    edges = np.array([0, 2 ** 64 - 1, 2 ** 63, 2 ** 63 - 1, (2 ** 14 - 1) << 49,
                      ((2 ** 14 - 1) << 49) | (2 ** 49 - 1)], np.uint64)
    for bits in (h, tail, edges):
        compiled = np.array([kernels._draw(v) for v in bits], np.float32)
        assert np.array_equal(compiled, nz.normal_from_bits(bits))
    assert np.abs(nz.normal_from_bits(tail)).min() > 3.9  # the tail is the tail


def test_read_noise_is_standard_normal():
    """2 million draws of one stream: mean, variance, the distribution function (KS) and the
    tails beyond 3 and 4 sigma, each against N(0, 1) at its sampling error."""
    n = 2_000_000
    z = nz.stream_normals(nz.stream_keys(11, nz.READ, 4, 0, 1, 2), np.arange(n)).astype(
        np.float64)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(np.sort(z)[::997] / math.sqrt(2)))
    ecdf = (np.arange(0, n, 997) + 0.5) / n
    assert np.abs(cdf - ecdf).max() < 1.63 / math.sqrt(n) * 3  # KS at far below 1e-6
    for k in (3.0, 4.0):
        expected = n * math.erfc(k / math.sqrt(2))
        assert abs((np.abs(z) > k).sum() - expected) < 5 * math.sqrt(expected)
    top = nz.normal_from_bits(np.array([2 ** 63 - 1], np.uint64))[0]  # the table's last knot
    assert 6.0 < top < 6.02 and np.abs(z).max() <= top


def test_streams_differ_by_every_key_field():
    base = (5, nz.READ, 7, 1, 0, 3)
    keys = {int(nz.stream_keys(*base)[0])}
    for i in range(len(base)):
        changed = list(base)
        changed[i] += 1
        keys.add(int(nz.stream_keys(*changed)[0]))
    assert len(keys) == len(base) + 1
    a = nz.stream_normals(nz.stream_keys(*base), np.arange(1000))
    b = nz.stream_normals(nz.stream_keys(*base[:-1], 4), np.arange(1000))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.15


@needs_numba
def test_whole_analog_run_is_the_same_with_and_without_numba(monkeypatch):
    """The digits CNN in analog mode (read noise, programming noise, stuck cells) and in the
    one-pass corner: identical outputs from the kernel and from numpy."""
    import dataclasses

    from isa.chip import Chip
    x = np.load(f"{MODELS}/digits_test_x.npy")[:6]
    one_pass = dataclasses.replace(Chip().arch, dac_bits=8, adc_per_step=0)
    for chip in (None, one_pass):
        program = compile_model(model_path("digits_cnn"), chip=chip)
        fast = run(program, x, mode="analog", timing=False).outputs["logits"]
        monkeypatch.setattr(kernels, "_kernel", None)
        slow = run(program, x, mode="analog", timing=False).outputs["logits"]
        monkeypatch.undo()
        assert np.array_equal(fast, slow)


@pytest.mark.parametrize("implementation", ["numba", "numpy"])
def test_blocks_of_rows_draw_the_same_streams(implementation, monkeypatch):
    """An analog run whose crossbar reads go one tile and one row at a time
    (``analog.BLOCK_BYTES``) draws each row's noise from the same place in its stream as a
    run in big blocks."""
    from runtime import analog
    if implementation == "numpy":
        monkeypatch.setattr(kernels, "_kernel", None)
    elif kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    x = np.load(f"{MODELS}/digits_test_x.npy")[:3]
    program = compile_model(model_path("digits_cnn"))
    whole = run(program, x, mode="analog", timing=False).outputs["logits"]
    monkeypatch.setattr(analog, "BLOCK_BYTES", 1)  # one tile, one row a block
    monkeypatch.setattr(analog, "MIN_BLOCK_ROWS", 1)
    rows = run(program, x, mode="analog", timing=False).outputs["logits"]
    assert np.array_equal(whole, rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.2, 0.6])
def test_the_sparse_product_gives_blas_bits_on_exact_sums(dtype, density, monkeypatch):
    """``exact_product``: the compiled sum of selected rows (forced on) equals BLAS bit for
    bit where the sums are exact (input digits times cells on the 2**-12 grid), at every
    density, with rows that select nothing and multi-level digits (a multi-bit DAC)."""
    if kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    rng = np.random.default_rng(int(density * 100))
    cells = (rng.integers(0, 16 * 4096, (128, 200)) / 4096).astype(dtype)
    planes = (rng.random((300, 128)) < density) * rng.integers(1, 4, (300, 128))
    planes[::7] = 0
    planes = planes.astype(dtype)
    monkeypatch.setattr(kernels, "SPARSE_BELOW", 1.0)
    calls, compiled = [], kernels._sparse_product
    monkeypatch.setattr(kernels, "_sparse_product", lambda *a: (calls.append(1), compiled(*a)))
    got = kernels.exact_product(planes.reshape(3, 100, 128), cells)
    want = planes @ cells
    assert len(calls) == 3 and got.dtype == want.dtype == dtype and np.array_equal(got, want)
    assert (want[::7] == 0).all() and (density == 0) == (not want.any())


@needs_numba
def test_each_plane_chooses_its_product(monkeypatch):
    """Planes of one product at densities on both sides of ``SPARSE_BELOW``: the sparse
    ones go to the compiled product, the dense ones to BLAS, and the whole equals BLAS's
    bits (the counts passed in, or counted when not)."""
    rng = np.random.default_rng(5)
    cells = (rng.integers(0, 16 * 4096, (64, 50)) / 4096).astype(np.float32)
    density = np.array([0.5, 0.02, 0.3, 0.0])[:, None, None]
    planes = (rng.random((4, 40, 64)) < density).astype(np.float32)
    monkeypatch.setattr(kernels, "SPARSE_BELOW", 0.25)
    sparse, compiled = [], kernels._sparse_product

    def spy(a, b, out):
        sparse.extend(s for s in range(len(planes)) if np.shares_memory(a, planes[s]))
        compiled(a, b, out)
    monkeypatch.setattr(kernels, "_sparse_product", spy)
    for counts in (None, np.count_nonzero(planes, axis=(1, 2))):
        sparse.clear()
        got = kernels.exact_product(planes, cells, counts)
        assert sparse == [1, 3]  # not 0 and 2
        assert np.array_equal(got, planes.reshape(-1, 64) @ cells)


@needs_numba
@pytest.mark.parametrize("mode", ["quantized", "analog"])
def test_runs_are_the_same_whichever_product_reads(mode, monkeypatch):
    """The digits CNN with every crossbar read's product sparse, then every one BLAS, then
    through integer products (all sparse, all onnxruntime's GEMM: grid units in analog mode,
    counts of each Gmin-plus-digit level in quantized mode): identical outputs (quantized
    mode is float64 off the grid, analog float32 on it)."""
    from runtime import analog
    x = np.load(f"{MODELS}/digits_test_x.npy")[:6]
    program = compile_model(model_path("digits_cnn"))
    outputs, gemms, matmul = [], [], intgemm.matmul
    monkeypatch.setattr(intgemm, "matmul", lambda *a: (gemms.append(1), matmul(*a))[1])
    integer_reads = []
    for name in ("integer_product", "counted_product"):
        product = getattr(analog, name)
        monkeypatch.setattr(analog, name, lambda *a, p=product: (integer_reads.append(1),
                                                                   p(*a))[1])
    choices = [(False, 1.0, 0.0), (False, 0.0, 0.0)]  # float32 or float64: sparse, BLAS
    choices += [(True, 0.0, 1.0), (True, 0.0, 0.0)]  # integer: sparse, onnxruntime's GEMM
    for integer, share, integer_share in choices:
        monkeypatch.setattr(analog, "INTEGER_PRODUCTS", integer)
        monkeypatch.setattr(kernels, "SPARSE_BELOW", share)
        monkeypatch.setattr(kernels, "INTEGER_SPARSE_BELOW", integer_share)
        gemms.clear()
        integer_reads.clear()
        outputs.append(run(program, x, mode=mode, timing=False).outputs["logits"])
        assert bool(gemms) == (integer and integer_share == 0.0)
        assert bool(integer_reads) == integer
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])


@needs_numba
@pytest.mark.parametrize("mode", ["quantized", "analog"])
def test_one_pass_corner_reads_its_digits_in_integers(monkeypatch, mode):
    """The one-pass corner (8-bit DAC digits, the ADC after analog shift-add): integer
    counts of its levels (quantized) and integer products in grid units (analog) give the
    float64 products' outputs."""
    import dataclasses

    from isa.chip import Chip
    from runtime import analog
    x = np.load(f"{MODELS}/digits_test_x.npy")[:6]
    one_pass = dataclasses.replace(Chip().arch, dac_bits=8, adc_per_step=0)
    program = compile_model(model_path("digits_cnn"), chip=one_pass)
    gemms, matmul = [], intgemm.matmul
    monkeypatch.setattr(intgemm, "matmul", lambda *a: (gemms.append(1), matmul(*a))[1])
    monkeypatch.setattr(kernels, "INTEGER_SPARSE_BELOW", 0.0)
    outputs = []
    for integer in (False, True):
        monkeypatch.setattr(analog, "INTEGER_PRODUCTS", integer)
        outputs.append(run(program, x, mode=mode, timing=False).outputs["logits"])
    assert gemms and np.array_equal(*outputs)


def _grid_case(rng, density, planes=4, rows=40, inner=64, cols=50, top=2 ** 14):
    """Binary planes at the given densities and cells on the 2**-12 grid below ``top``
    grid units: the planes, the cells as float32 and as integer units."""
    units = rng.integers(0, top, (inner, cols))
    units[0] = top - 1  # the largest cells the integer product takes
    cells = (units / 4096).astype(np.float32)
    a = (rng.random((planes, rows, inner)) < np.asarray(density)[:, None, None])
    a[:, 0] = True  # a row that selects every cell
    return a.astype(np.float32), cells, units


@pytest.mark.parametrize("digit", [1, 127, 255])
@pytest.mark.parametrize("integer_share", [0.0, 0.25, 1.0, "numpy"])
def test_integer_products_give_the_float_products_bits(integer_share, digit, monkeypatch):
    """``integer_product`` against the float64 product of the same cells: the same sums
    (in grid units), for a 1-bit DAC's planes and for digits up to 127 and 255 (their
    halves joined; a digit of 128 or more adds a second half of the inputs), with dense
    planes through onnxruntime's integer GEMM (runs of consecutive ones in one call),
    sparse ones through the compiled rows, or both; without numba every plane through the
    GEMM."""
    if integer_share == "numpy":
        monkeypatch.setattr(kernels, "_kernel", None)
        integer_share = 0.25
    elif kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    rng = np.random.default_rng(int(integer_share * 4))
    density = [0.5, 0.02, 0.3, 0.4, 0.0]
    a, cells, units = _grid_case(rng, density, planes=len(density))
    a = a * rng.integers(1, digit + 1, a.shape).astype(np.float32)
    a[:, 0] = digit  # the largest sums the integer product takes
    monkeypatch.setattr(kernels, "INTEGER_SPARSE_BELOW", integer_share)
    calls, matmul = [], intgemm.matmul
    monkeypatch.setattr(intgemm, "matmul", lambda x, *r: (calls.append(x.shape), matmul(x, *r))[1])
    units_, wide = kernels.wide_cells(cells, 4096.0)
    assert np.array_equal(units_, units)
    twice = None if digit == 1 else kernels.halves(wide)
    got = kernels.integer_product(a, units_, wide if twice is None else None, None, twice)
    assert got.dtype == np.int32
    want = a.reshape(-1, a.shape[2]).astype(np.float64) @ cells.astype(np.float64)
    assert np.array_equal(got * 2.0 ** -12, want)
    widths = [w for _, w in calls]
    assert widths == [2 * 64 if digit in (1, 255) else 64] * len(calls)
    calls = [m for m, _ in calls]
    if kernels._kernel is None:  # numpy: every plane through the integer GEMM, in one call
        assert calls == [len(density) * a.shape[1]]
    else:
        want = {0.0: [len(density) * 40], 0.25: [40, 2 * 40], 1.0: []}[integer_share]
        assert calls == want  # planes 0, 2-3 dense at 0.25: two runs


@pytest.mark.parametrize("digit", [1, 255])
@pytest.mark.parametrize("integer_share", [0.0, 0.25, 1.0, "numpy"])
def test_counted_products_give_the_float64_products_bits(integer_share, digit, monkeypatch):
    """``counted_product`` (quantized cells: float32 of Gmin plus a digit, zero padding)
    against the float64 product rounded to float32, for a 1-bit DAC's planes and 8-bit
    digits, with dense planes counting levels through onnxruntime's GEMM, sparse ones
    summing rows, or both; without numba every plane through the GEMM; and
    ``level_indicators`` refusing a cell that is no level."""
    if integer_share == "numpy":
        monkeypatch.setattr(kernels, "_kernel", None)
        integer_share = 0.25
    elif kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    rng = np.random.default_rng(7)
    levels = np.float32(1 / 13 + np.arange(4)).astype(np.float64)
    cells = levels[rng.integers(0, 4, (64, 50))]
    cells[60:] = 0.0  # padding rows
    density = [0.5, 0.02, 0.3, 0.4, 0.0]
    a = (rng.random((len(density), 40, 64)) < np.asarray(density)[:, None, None])
    a[:, 0] = True
    a = a * rng.integers(1, digit + 1, a.shape)
    a[1, 1] = digit  # the largest digit
    a = a.astype(np.float64)
    monkeypatch.setattr(kernels, "INTEGER_SPARSE_BELOW", integer_share)
    calls, matmul = [], intgemm.matmul
    monkeypatch.setattr(intgemm, "matmul", lambda x, *r: (calls.append(len(x)), matmul(x, *r))[1])
    onehot = kernels.level_indicators(cells, levels)
    got = kernels.counted_product(a, cells, levels, onehot)
    want = (a.reshape(-1, 64) @ cells).astype(np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert calls == ([5 * 40] if kernels._kernel is None else
                     {0.0: [5 * 40], 0.25: [40, 2 * 40], 1.0: []}[integer_share])
    assert kernels.level_indicators(np.where(cells == levels[2], 0.5, cells), levels) is None


def test_integer_gemm_is_exact_at_its_contracts_limits():
    """uint8 128 and 1 against int8 127 (adjacent pairs at 32512, just below int16's limit
    where MLAS's kernels without VNNI saturate), every entry at its largest: onnxruntime's
    result equals int64 arithmetic; other types are refused. (On a CPU with VNNI this checks
    the VNNI kernels; the others' exactness rests on the pair bound.)"""
    rng = np.random.default_rng(1)
    a = rng.choice(np.array([0, 1, 128], np.uint8), (33, 300))
    a[0] = 128
    b = rng.integers(0, 128, (300, 17)).astype(np.int8)
    b[:, 0] = 127
    out = np.empty((33, 17), np.int32)
    intgemm.matmul(a, b, out)
    assert np.array_equal(out, a.astype(np.int64) @ b.astype(np.int64))
    assert out[0, 0] == 300 * 128 * 127
    with pytest.raises(TypeError):
        intgemm.matmul(a.astype(np.int8), b, out)


def test_float_gemm_rows_do_not_depend_on_the_rows_beside_them():
    """``intgemm.sgemm``: each row of a product has the same bits whichever rows share the
    call (a lone row and a lone column included: MLAS's kernels for them sum otherwise),
    also for the shapes whose columns MLAS's own threads would have split (K above 128, a
    few dozen columns), so that ideal mode's outputs do not depend on batching; within
    float32 rounding of the float64 product; other types refused."""
    rng = np.random.default_rng(3)
    for inner, cols in ((9, 16), (144, 16), (32, 10), (576, 64), (2304, 100), (9, 1)):
        a = rng.standard_normal((300, inner)).astype(np.float32)
        b = rng.standard_normal((inner, cols)).astype(np.float32)
        whole = intgemm.sgemm(a, b, np.empty((300, cols), np.float32))
        for s0, s1 in ((0, 1), (7, 8), (3, 5), (3, 6), (10, 59), (10, 75), (0, 300)):
            part = intgemm.sgemm(a[s0:s1], b, np.empty((s1 - s0, cols), np.float32))
            assert np.array_equal(part, whole[s0:s1]), (inner, cols, s0, s1)
        np.testing.assert_allclose(whole, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    assert intgemm.sgemm(a[:0], b, np.empty((0, 1), np.float32)).shape == (0, 1)
    with pytest.raises(TypeError):
        intgemm.sgemm(a.astype(np.float64), b, np.empty((300, 1), np.float32))
    with pytest.raises(ValueError):
        intgemm.sgemm(a, b, np.empty((2, 300), np.float32).T)


@pytest.mark.parametrize("implementation", ["numba", "numpy"])
def test_wide_cells_split_only_integers_in_range(implementation, monkeypatch):
    """``wide_cells``: grid units, and halves that add back to them; None for a cell at
    2**14 units, below 0 or between grid points."""
    if implementation == "numpy":
        monkeypatch.setattr(kernels, "_kernel", None)
    elif kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    units = np.array([[0.0, 127, 128], [2 ** 14 - 1, 5, 300]])
    got, wide = kernels.wide_cells((units / 64).astype(np.float32), 64.0)
    assert got.dtype == np.int32 and np.array_equal(got, units)
    assert np.array_equal(wide[:2] + 128 * wide[2:].astype(np.int64), units)
    for bad in (2.0 ** 14, -1.0, 0.5, 1e12):
        cells = (np.where(units == 5, bad, units) / 64).astype(np.float32)
        assert kernels.wide_cells(cells, 64.0) is None


@pytest.mark.parametrize("implementation", ["numba", "numpy"])
@pytest.mark.parametrize("per_step", [1, 0])
@pytest.mark.parametrize("noise", ["none", "streams", "padded", "draws"])
def test_reads_of_integer_currents_in_grid_units(implementation, per_step, noise):
    """read_pass on int32 currents with ``unit`` 2**-12 gives the bits of the same currents
    as float32 level units, for every noise source and both ADC placements; a unit that is
    no power of 2 is refused."""
    if implementation == "numba" and kernels._kernel is None:
        pytest.skip("numba is not installed (or CIMSTACK_NUMBA=0)")
    rng = np.random.default_rng([9, per_step, len(noise)])
    case, vectors = _case(rng, per_step, 2)
    units = np.rint(case["current"].clip(0) * 4096).astype(np.int32)
    keys = rng.integers(0, 2 ** 63, (3, 10 // vectors), dtype=np.uint64)
    widths = np.array([5, 3, 1]) if noise == "padded" else None
    if widths is not None:
        units *= (np.arange(5) < widths[:, None])[None, :, None, None, None, :]
    draws = {"none": None, "streams": kernels.Streams(keys, vectors),
             "padded": kernels.Streams(keys, vectors, 0, widths),
             "draws": rng.standard_normal(units.shape).astype(np.float32)}[noise]
    outs = []
    for current, unit in ((units, 2.0 ** -12), ((units / 4096).astype(np.float32), 1.0)):
        out = np.zeros((3, 10, 5))
        kernels.read_pass(**{**case, "current": current}, unit=unit, out=out, noise=draws,
                          implementation=implementation)
        outs.append(out)
    assert np.array_equal(*outs) and outs[0].any()
    with pytest.raises(ValueError, match="power of 2"):
        kernels.read_pass(**{**case, "current": units}, unit=0.3, out=outs[0], noise=draws)


def test_reads_take_the_sparse_product_only_where_sums_are_exact(monkeypatch):
    """Quantized cells (float32 Gmin plus digits) sum exactly in float64 on the default
    chip, so its reads may go sparse; a chip with a tiny Gmin, 4-bit cells and an 8-bit DAC
    overflows 2**53 of Gmin's last bit, so its reads keep BLAS (whose order the sparse
    loop could not match)."""
    import dataclasses

    from isa.chip import Chip, with_overrides
    from runtime import analog, device
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((1, 5, 40))).astype(np.float32)
    x[x < 1.5] = 0  # sparse inputs
    corner = with_overrides(dataclasses.replace(Chip(), arch=dataclasses.replace(
        Chip().arch, cell_bits=4, dac_bits=8)), ["device.g_min_us=0.0001"])
    calls = []
    monkeypatch.setattr(analog, "exact_product",
                        lambda a, b, n: (calls.append(1), a.reshape(-1, a.shape[2]) @ b)[1])
    monkeypatch.setattr(analog, "counted_product",
                        lambda a, b, *r: (calls.append(2), a.reshape(-1, a.shape[2]) @ b)[1])
    for integer in (False, True):  # the float products' gate, then the integer ones'
        monkeypatch.setattr(analog, "INTEGER_PRODUCTS", integer)
        for chip, sparse in ((Chip(), True), (corner, False)):
            stuck = np.full((2, chip.arch.slices, 40, 3), -1, np.int8)
            prog = device.program(rng.standard_normal((40, 3)).astype(np.float32), chip,
                                  None, stuck, 3.0)
            assert analog.float64_exact([prog], 2 ** chip.arch.dac_bits - 1, chip) == sparse
            calls.clear()
            analog.tiles_mvm(x, np.ones((5, 1), np.float32), [prog], chip, None)
            counted = integer and kernels.compiled()
            assert set(calls) == ({2 if counted else 1} if sparse else set())


@pytest.mark.parametrize("dac_bits", [1, 2])
def test_reads_pass_their_planes_true_nonzero_count(dac_bits, monkeypatch):
    """The counts a read passes ``exact_product`` (once per block, from ``split_digits``)
    are the numbers of non-zero entries of the planes it multiplies, plane by plane."""
    import dataclasses

    from isa.chip import Chip
    from runtime import analog, device
    chip = dataclasses.replace(Chip(), arch=dataclasses.replace(Chip().arch, dac_bits=dac_bits))
    rng = np.random.default_rng(dac_bits)
    x = np.abs(rng.standard_normal((1, 7, 40))).astype(np.float32)
    x[x < 1.0] = 0
    seen = []
    check = lambda a, n: seen.append(np.array_equal(n, np.count_nonzero(a, axis=(1, 2))))  # noqa: E731
    monkeypatch.setattr(analog, "exact_product",
                        lambda a, b, n: (check(a, n), a.reshape(-1, 40) @ b)[1])
    monkeypatch.setattr(analog, "counted_product",
                        lambda a, b, levels, onehot, n: (check(a, n), a.reshape(-1, 40) @ b)[1])
    stuck = np.full((2, chip.arch.slices, 40, 3), -1, np.int8)
    progs = [device.program(rng.standard_normal((40, 3)).astype(np.float32), chip, None,
                            stuck, 3.0) for _ in range(2)]
    analog.tiles_mvm(np.concatenate([x, x]), np.ones((7, 1), np.float32), progs, chip, None)
    assert seen and all(seen)


@pytest.mark.parametrize("dac_bits", [1, 2, 3, 8])
def test_digit_planes_levels_and_counts(dac_bits, monkeypatch):
    """``split_digits`` (compiled when numba is on, numpy's otherwise) against the digits
    written out by hand: planes least significant first, their per-row sums and non-zero
    counts, both implementations the same."""
    rng = np.random.default_rng(dac_bits)
    q = rng.integers(0, 256, (7, 33)).astype(np.int32)
    q[2] = 0
    steps = -(-8 // dac_bits)
    want = np.stack([(q // 2 ** (dac_bits * b)) % 2 ** dac_bits for b in range(steps)])
    results = [kernels.split_digits(q, dac_bits, steps)]
    monkeypatch.setattr(kernels, "_kernel", None)
    results.append(kernels.split_digits(q, dac_bits, steps))
    for planes, active, nonzeros in results:
        assert planes.dtype == active.dtype == np.float32
        assert np.array_equal(planes, want)
        assert np.array_equal(active, want.sum(axis=2))
        assert np.array_equal(nonzeros, (want != 0).sum(axis=(1, 2)))
    assert (results[0][0] * 2.0 ** (dac_bits * np.arange(steps))[:, None, None]).sum(0).tolist() \
        == q.tolist()
