"""basis_decompose: every crossbar matmul becomes a projection onto the global basis plus a
combination of those projections (BasisN). Does nothing without ``ctx.basis``.

Before: lowered graph (``xbar_matmul`` ops over [K, M] weights).
After: no ``xbar_matmul`` remains. Each is, with L the basis unit, N its size and h the basis
copies one crossbar holds (h*L <= rows, h*N <= weight columns):

    %xp   = pad(%x)                   K zero padded to a multiple of h*L (only if needed)
    %proj = basis_project(%xp, @basis.tile)   [.., K/L * N]: every L-row unit times B
    %y    = combine(%proj, @coef, @scale[, @bias])   y = proj @ (levels * scale) (+ bias)

``@basis.tile`` is the same [h*L, h*N] block-diagonal constant in every layer, so the chip
holds it on all its crossbars, written once. ``combine`` carries the layer's reconstruction
error, coefficient sparsity and contest (merged reads over contest-free reads), and
``graph.notes`` a summary, both shown by the IR printer.

Coefficient scales: the basis set was made from the ONNX weights; folding batchnorm and Gemm's
alpha scale each kernel, so each scale is multiplied by its kernel's gain (IR weight over ONNX
weight). Where the IR weight is not a per-kernel scaling of the ONNX one, the scales are
re-fitted to the IR weight and the note says so.

``reconstruction_warning`` turns the measured errors into the warning ``cimc`` prints when a
fit is poor (``WARN_REL_ERR``).
"""

from __future__ import annotations

import numpy as np

from isa import ChipGeometry
from isa.combiner import combine_work

from ..basis import BasisSet, fit_scales, reconstruct
from ..errors import CompileError
from ..ir import Graph, Op
from ..progress import bar

# Warn when a layer's weights are reconstructed with a larger relative error than this. On the
# digits CNN, post-training fits whose worst layer stayed under it lost at most 2.3 points of
# accuracy (a complete basis with 4-bit coefficients: 0.21); every fit above it lost 5 points
# or more (N = 8: 0.35), and N = 4 (0.7) fell to about 20 %.
WARN_REL_ERR = 0.25


def copies(unit: int, n: int, chip: ChipGeometry) -> int:
    """Basis copies h one crossbar holds: h * unit <= rows and h * n <= weight columns."""
    return min(chip.rows // unit, chip.weights_per_row // n)


def check_fits(unit: int, n: int, chip: ChipGeometry, source: str) -> None:
    """Raise CompileError (naming ``source``, e.g. "--basis 20") unless one copy of a basis of
    ``n`` vectors of ``unit`` weights fits a crossbar of ``chip``."""
    if copies(unit, n, chip) >= 1:
        return
    if unit > chip.rows:
        raise CompileError(f"{source}: a basis vector of {unit} weights does not fit a crossbar "
                           f"of {chip.rows} rows; use --basis-unit {chip.rows} or less")
    raise CompileError(f"{source}: a basis of {n} vectors does not fit a crossbar of "
                       f"{chip.weights_per_row} weight columns ({chip.cols} cells / (2 x "
                       f"{chip.slices} slices)); the largest N that fits is "
                       f"{chip.weights_per_row}")


def basis_tile(basis: BasisSet, chip: ChipGeometry) -> tuple[np.ndarray, int]:
    """The block-diagonal crossbar tile and its copy count h."""
    unit, n = basis.basis.shape
    check_fits(unit, n, chip, f"basis set of {n} x {unit}")
    h = copies(unit, n, chip)
    tile = np.zeros((h * unit, h * n), np.float32)
    for i in range(h):
        tile[i * unit:(i + 1) * unit, i * n:(i + 1) * n] = basis.basis
    return tile, h


def _gains(w_ir: np.ndarray, w_onnx: np.ndarray | None) -> np.ndarray | None:
    """Per-kernel g with w_ir = w_onnx * g, or None when no such g exists."""
    if w_onnx is None or w_onnx.shape != w_ir.shape:
        return None
    den = (w_onnx * w_onnx).sum(axis=0)
    g = np.where(den > 0, (w_ir * w_onnx).sum(axis=0) / np.where(den > 0, den, 1), 0)
    resid = np.linalg.norm(w_ir - w_onnx * g) / max(np.linalg.norm(w_ir), 1e-30)
    return g.astype(np.float32) if resid < 1e-4 else None


def _pad(graph: Graph, op: Op, x: str, padded: int) -> str:
    shape = graph.shape(x)
    if shape[-1] == padded:
        return x
    r = len(shape)
    xp = graph.add_value(graph.fresh(f"{op.origin or op.id}.padded"), shape[:-1] + (padded,))
    graph.add_op("pad", [x], [xp], {"pads": [0] * (2 * r - 1) + [padded - shape[-1]],
                                     "mode": "constant", "value": 0.0}, op.origin)
    if x in graph.ranges:
        graph.ranges[xp] = graph.ranges[x]
    return xp


def _decompose(graph: Graph, op: Op, ctx, tile_name: str, h: int) -> dict:
    basis: BasisSet = ctx.basis
    name = op.origin
    if name not in basis.layers:
        raise CompileError(f"layer {name!r} has no coefficients in the basis set (it has "
                           f"{len(basis.layers)} layers: {', '.join(list(basis.layers)[:5])}...)")
    layer = basis.layers[name]
    w = graph.constants[op.inputs[1]]
    k, m = w.shape
    if layer.rows != k or layer.levels.shape[2] != m:
        raise CompileError(f"layer {name!r}: basis coefficients are for a {layer.rows} x "
                           f"{layer.levels.shape[2]} matrix, the model's is {k} x {m}")
    gains = _gains(w, ctx.basis_reference.get(name))
    scales = layer.scales * gains if gains is not None else fit_scales(w, basis.basis,
                                                                         layer.levels)
    unit, n = basis.basis.shape
    padded = -(-k // (h * unit)) * h * unit
    levels = np.zeros((padded // unit, n, m), np.float32)
    levels[:layer.levels.shape[0]] = layer.levels
    xp = _pad(graph, op, op.inputs[0], padded)
    proj = graph.add_value(graph.fresh(f"{name or op.id}.proj"),
                           graph.shape(xp)[:-1] + (padded // unit * n,))
    graph.add_op("basis_project", [xp, tile_name], [proj],
                 {"unit": unit, "copies": h, "groups": padded // (h * unit)}, op.origin)
    coef = graph.add_constant(graph.fresh(f"{name or op.id}.coef"),
                              levels.reshape(-1, m))
    scale = graph.add_constant(graph.fresh(f"{name or op.id}.scale"), scales.astype(np.float32))
    recon = reconstruct(basis.basis, levels[:layer.levels.shape[0]] * scales, k)
    err = float(np.linalg.norm(w - recon) / max(np.linalg.norm(w), 1e-30))
    work = combine_work(layer.levels, basis.bits)
    graph.add_op("combine", [proj, coef, scale] + op.inputs[2:], op.outputs,
                 {"bits": basis.bits, "unit": n, "act": op.attrs.get("act"),
                  "rel_err": round(err, 5), "sparsity": round(float(np.mean(layer.levels == 0)),
                                                               4),
                  "contest": round(work.contest, 3), "_refit": gains is None}, op.origin)
    return {"layer": name, "rel_err": err, "refit": gains is None, "contest": work.contest,
            "sparsity": float(np.mean(layer.levels == 0))}


def reconstruction_warning(rows: list[dict], n: int) -> str | None:
    """A one-line warning naming the worst-reconstructed layer of a basis of ``n`` vectors, or
    None when every layer's relative error (``ctx.stats['basis']``) is within WARN_REL_ERR."""
    worst = max(rows, key=lambda r: r["rel_err"], default=None)
    if worst is None or worst["rel_err"] <= WARN_REL_ERR:
        return None
    return (f"the basis of N={n} reconstructs layer {worst['layer']!r} with a relative weight "
            f"error of {worst['rel_err']:.2f} (above {WARN_REL_ERR}, where post-training fits "
            "start to lose accuracy): expect a large accuracy loss; use a larger N, --basis "
            "auto with --calibrate and --calibrate-labels, or train the basis with "
            "tools/finetune_basis.py")


def run(graph: Graph, ctx) -> Graph:
    basis: BasisSet | None = getattr(ctx, "basis", None)
    ops = [o for o in graph.ops() if o.kind == "xbar_matmul"]
    if basis is None or not ops:
        return graph
    tile, h = basis_tile(basis, ctx.chip)
    tile_name = graph.add_constant(graph.fresh("basis.tile"), tile)
    rows = []
    for op in bar(ops, ctx.progress, "basis-decompose", "layer"):
        graph.remove_op(op)
        rows.append(_decompose(graph, op, ctx, tile_name, h))
    graph.drop_dead()
    errs = [r["rel_err"] for r in rows]
    graph.notes = [f"basis: N={basis.n} unit={basis.unit} coef_bits={basis.bits} "
                   f"copies_per_xbar={h} layers={len(rows)} "
                   f"rel_err mean={np.mean(errs):.4f} max={max(errs):.4f}"]
    graph.notes += [f"  {r['layer']}: rel_err={r['rel_err']:.4f} sparsity={r['sparsity']:.3f} "
                    f"contest={r['contest']:.2f}" + (" scales refitted" if r["refit"] else "")
                    for r in rows]
    ctx.stats["basis"] = rows
    return graph
