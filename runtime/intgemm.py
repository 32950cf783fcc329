"""Matrix products on onnxruntime's kernel library, MLAS, written into the caller's array:
exact integer ones for crossbar reads (MatMulInteger, uint8 [M, K] @ int8 [K, N] -> int32
[M, N]: ``matmul``), and ideal mode's float32 ones (MatMul: ``sgemm``).

MLAS runs the integer products on AVX-512 VNNI where the CPU has it: on the project's
2-core AMD EPYC (Zen 5), on a read's block, 1.6-1.8x the float32 GEMM of OpenBLAS's AVX-512
kernels and about 3x its AVX2 ones, one thread each, for the same exact sums (``python -m
tools.bench_sparse_product``). A session per operator, on one intra-op thread, built on
first use: cimrun's worker threads call them concurrently (onnxruntime allows concurrent
runs of one session and releases the GIL while it runs: two threads each ran their
products within 10 % of one thread's time).

The integer products are exact on every CPU MLAS supports, for callers that keep each
adjacent pair of products a[m, k] b[k, n] + a[m, k + 1] b[k + 1, n] within int16
(|x| <= 32767): without VNNI, MLAS's AVX2 and AVX-512BW kernels sum such pairs in saturating
int16 (``vpmaddubsw``; onnxruntime's quantization guide calls it the U8S8 saturation issue).
0 <= a <= 128 with 0 <= b <= 127 keeps them at most 32512.

The float products keep a row's floats independent of the rows beside it, so that ideal
mode's outputs do not depend on how samples are batched: MLAS's kernels for a single row
and for a single column sum otherwise, so those run padded, and its own threads would sum
K in other blocks when they split the columns (``mvm_groups.ideal_product`` shares rows
out to its threads instead). They pick MLAS's AVX-512 kernels where OpenBLAS may be held
to AVX2 (this machine's environment): ResNet-50's ideal marginal on two threads 52-56 ->
34-40 ms there, the same (35-41 ms) with OpenBLAS's AVX-512 kernels. A call costs about
8 us, against about 1 for numpy's smallest products: one sample through the digits MLP
takes about 0.37 ms instead of 0.29.
"""

from __future__ import annotations

import threading

import numpy as np

_LOCK = threading.Lock()
_SESSIONS: dict = {}


def one_thread_session(model, arena: bool = True):
    """An onnxruntime CPU session of ``model`` (an onnx ModelProto) on one intra-op thread,
    quiet; ``arena``: onnxruntime's memory arena for what the model allocates itself. Our
    threads call such sessions concurrently (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run_into(session, feeds: dict, out: np.ndarray, output: str = "y") -> np.ndarray:
    """Run ``session`` on ``feeds`` (name -> array, bound without copies where contiguous),
    writing its ``output`` into ``out`` (C-contiguous, the output's shape); returns out."""
    run_bound(session, feeds, {output: out})
    return out


def run_bound(session, feeds: dict, outs: dict) -> None:
    """``run_into`` with several outputs: each output named in ``outs`` written into its
    array (C-contiguous, the output's shape)."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name, out in outs.items():
        binding.bind_output(name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)


def _session(op: str):
    """The session of one ``op`` node (MatMulInteger: uint8 @ int8 -> int32; MatMul:
    float32), built on first use."""
    session = _SESSIONS.get(op)
    if session is not None:
        return session
    with _LOCK:
        if op not in _SESSIONS:
            from onnx import TensorProto, helper

            a, b, y = ((TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
                       if op == "MatMulInteger" else (TensorProto.FLOAT,) * 3)
            graph = helper.make_graph(
                [helper.make_node(op, ["a", "b"], ["y"])], "gemm",
                [helper.make_tensor_value_info("a", a, ["M", "K"]),
                 helper.make_tensor_value_info("b", b, ["K", "N"])],
                [helper.make_tensor_value_info("y", y, ["M", "N"])])
            _SESSIONS[op] = one_thread_session(
                helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
        return _SESSIONS[op]


def _run(op: str, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    return run_into(_session(op), {"a": a, "b": b}, out)


def _check_out(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    if not out.flags.c_contiguous or out.shape != (a.shape[0], b.shape[1]):
        raise ValueError("out must be a C-contiguous [M, N] array")


def sgemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out [M, N] float32 (C-contiguous) = a [M, K] @ b [K, N] float32, by MLAS on this
    thread; returns out. Each row's floats depend only on that row of a and on b, whatever
    M: MLAS's products of a single row or a single column take other kernels, with other
    sums, so a lone row runs as two and a lone column beside a zero one. (MLAS's own threads
    would not keep that: splitting the columns, they sum K in longer blocks; callers share
    rows out instead.) ``tests/test_kernels.py`` checks it."""
    if a.dtype != np.float32 or b.dtype != np.float32 or out.dtype != np.float32:
        raise TypeError("sgemm takes float32 @ float32 into float32")
    _check_out(a, b, out)
    if a.shape[0] == 0 or b.shape[1] == 0:
        return out
    if b.shape[1] == 1:
        two = np.empty((a.shape[0], 2), np.float32)
        sgemm(a, np.concatenate([b, np.zeros_like(b)], axis=1), two)
        out[:] = two[:, :1]
        return out
    if a.shape[0] == 1:
        two = np.empty((2, b.shape[1]), np.float32)
        _run("MatMul", np.concatenate([a, a]), b, two)
        out[:] = two[:1]
        return out
    return _run("MatMul", a, b, out)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out [M, N] int32 (C-contiguous) = a [M, K] uint8 @ b [K, N] int8, exact under the
    module's pair contract; returns out."""
    if a.dtype != np.uint8 or b.dtype != np.int8 or out.dtype != np.int32:
        raise TypeError("matmul takes uint8 @ int8 into int32")
    _check_out(a, b, out)
    if a.shape[0] == 0:
        return out
    return _run("MatMulInteger", a, b, out)
