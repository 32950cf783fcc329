"""sort-weights: weight sorting (Farias and Kung, arXiv 2410.21730) in the exact form a
crossbar allows, so that tiles written one after another on a crossbar share cell states.

Before: lowered graph (``xbar_matmul`` ops with ``tiles``), not yet scheduled.
After: when the model reprograms (more tiles than ``ctx.max_xbars``), every ``xbar_matmul``
whose tile grid is dense has its weight matrix's rows and columns permuted, its bias with the
columns. Its input arrives in the rows' order: its im2col's ``perm`` attribute (free: an
im2col gathers its patches anyway), else a ``permute`` op (a pass through the scratchpad
port); its result goes back to the original column order through its unpatch's ``perm``
(free), else a ``permute``. Every product is the same, so ideal mode still equals
onnxruntime. ``cimc --weight-sorting`` adds this pass before
schedule, and tells the schedule to place each rotating tile on the crossbar whose cells
differ least from it (``schedule``).

Why whole rows and columns only. A crossbar row is driven by one input element for all of
its columns, and a column sums its cells into one output. Moving a whole row together with
the input element that drives it, or a whole column together with the output it feeds, keeps
every product; moving one weight to another cell would need that cell to see a different
input than the rest of its row, which a crossbar cannot do. The paper's sorted sections
order individual weights, which needs index matching between inputs and cells; ours can
only order rows and columns, and that is one reason our reductions differ from the paper's.

The order: rows sorted by their L2 norm (ascending) are dealt round-robin over the layer's
row blocks (the tiles' ``chip.rows`` rows), so the k-th row of every block has about the same
magnitude; columns likewise over blocks of ``weights_per_row``. Every tile of a layer then
has the same magnitude profile cell by cell, whichever of its tiles the schedule puts one
after the other on a crossbar, and small weights meet small weights (equal high-order
digits). Layers whose tile grid has all-zero windows (grouped, depthwise) are left alone:
dealing rows across blocks would fill those windows with weights and add tiles.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Op
from .lower_to_crossbar import tile


def dealt(key: np.ndarray, block: int) -> np.ndarray:
    """The permutation P (new position i holds old index P[i]) that sorts ``key`` ascending
    and deals it round-robin over blocks of ``block`` positions: the k-th smallest goes to
    offset k // blocks of block k % blocks (a short last block is skipped once full)."""
    n = len(key)
    blocks = -(-n // block)
    positions = (np.arange(block)[:, None] + block * np.arange(blocks)[None, :]).ravel()
    perm = np.empty(n, np.int64)
    perm[positions[positions < n]] = np.argsort(key, kind="stable")
    return perm


def _dense(op: Op, shape, rows: int, cols: int) -> bool:
    """Whether the op maps every window of its weight's tile grid."""
    return len(op.attrs["tiles"]) == -(-shape[0] // rows) * -(-shape[1] // cols)


def _only_user(graph: Graph, name: str, kind: str) -> Op | None:
    """The one op reading ``name``, if it is of ``kind``, has no ``perm`` yet and ``name`` is
    no graph output."""
    users = graph.users(name)
    if len(users) == 1 and users[0][0].kind == kind and name not in graph.outputs \
            and users[0][0].attrs.get("perm") is None:
        return users[0][0]
    return None


def _add_permute(graph: Graph, src: str, dst: str, perm: np.ndarray, stem: str,
                 origin: str) -> None:
    """``dst`` = ``src`` gathered along its last axis by ``perm`` (a ``permute`` op)."""
    p = graph.add_constant(graph.fresh(f"{stem}.perm"), perm.astype(np.float32))
    graph.add_op("permute", [src, p], [dst], {}, origin)
    if src in graph.ranges:
        graph.ranges[dst] = graph.ranges[src]


def _order_rows(graph: Graph, op: Op, perm: np.ndarray, stem: str) -> None:
    """Feed ``op`` its input with the last axis in ``perm``'s order: its im2col's ``perm``
    when it reads one alone (free: im2col gathers anyway), else a ``permute``."""
    x = op.inputs[0]
    producer = graph.producer(x)
    if producer is not None and producer.kind == "im2col" and \
            _only_user(graph, x, "xbar_matmul") is op:
        graph.set_attrs(producer, {**producer.attrs, "perm": perm.tolist()})
        return
    out = graph.add_value(graph.fresh(f"{stem}.rows"), graph.shape(x))
    _add_permute(graph, x, out, perm, f"{stem}.rows", op.origin)
    graph.set_input(op, 0, out)


def _restore_columns(graph: Graph, op: Op, perm: np.ndarray, stem: str) -> None:
    """Give ``op``'s readers its result's last axis in the original order (``perm`` maps
    original to sorted positions): the one unpatch's ``perm`` (free), else a ``permute``."""
    y = op.outputs[0]
    unpatch = _only_user(graph, y, "unpatch")
    if unpatch is not None:
        graph.set_attrs(unpatch, {**unpatch.attrs, "perm": perm.tolist()})
        return
    back = graph.add_value(graph.fresh(f"{stem}.out"), graph.shape(y))
    graph.replace_uses(y, back)
    _add_permute(graph, y, back, perm, f"{stem}.cols", op.origin)


def sort_layer(graph: Graph, op: Op, rows: int, cols: int) -> None:
    """Permute ``op``'s weight rows and columns (module docstring), keeping its result."""
    w = graph.constants[op.inputs[1]]
    p_rows = dealt(np.linalg.norm(w, axis=1), rows)
    p_cols = dealt(np.linalg.norm(w, axis=0), cols)
    stem = op.origin or op.id
    sorted_w = np.ascontiguousarray(w[p_rows][:, p_cols])
    graph.set_input(op, 1, graph.add_constant(graph.fresh(f"{stem}.matrix"), sorted_w))
    if len(op.inputs) > 2 and op.inputs[2]:
        bias = graph.constants[op.inputs[2]][..., p_cols]
        graph.set_input(op, 2, graph.add_constant(graph.fresh(f"{stem}.bias"), bias))
    if not np.array_equal(p_rows, np.arange(len(p_rows))):
        _order_rows(graph, op, p_rows, stem)
    if not np.array_equal(p_cols, np.arange(len(p_cols))):
        _restore_columns(graph, op, np.argsort(p_cols), stem)
    graph.set_attrs(op, {**op.attrs, "tiles": tile(sorted_w, rows, cols)})


def run(graph: Graph, ctx) -> Graph:
    """Sort every dense crossbar layer when the model reprograms; ``ctx.stats["sort-weights"]``
    (layers sorted, whether it reprograms) also tells the schedule to place tiles by
    similarity."""
    mms = [op for op in graph.ops() if op.kind == "xbar_matmul"]
    tiles = sum(len(op.attrs["tiles"]) for op in mms)
    reprograms = ctx.max_xbars is not None and tiles > ctx.max_xbars
    rows, cols = ctx.chip.rows, ctx.chip.weights_per_row
    chosen = [op for op in mms if reprograms and _dense(op, graph.shape(op.inputs[1]), rows, cols)]
    for op in chosen:
        sort_layer(graph, op, rows, cols)
    graph.drop_dead()
    ctx.stats["sort-weights"] = {"layers": len(chosen), "reprograms": reprograms}
    return graph
