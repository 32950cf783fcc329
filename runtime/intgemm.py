"""Exact integer matrix products on onnxruntime's MatMulInteger: uint8 [M, K] @ int8 [K, N]
-> int32 [M, N], written into the caller's array.

MLAS, onnxruntime's kernel library, runs them on AVX-512 VNNI where the CPU has it: on the
project's 2-core AMD EPYC (Zen 5), on a read's block, 1.6-1.8x the float32 GEMM of
OpenBLAS's AVX-512 kernels and about 3x its AVX2 ones, one thread each, for the same exact
sums (``python -m tools.bench_sparse_product``). One session, built on first use, with one
intra-op thread: cimrun's worker threads call it concurrently (onnxruntime allows
concurrent runs of one session and releases the GIL while it runs: two threads each ran
their products within 10 % of one thread's time).

Exact on every CPU MLAS supports, for callers that keep each adjacent pair of products
a[m, k] b[k, n] + a[m, k + 1] b[k + 1, n] within int16 (|x| <= 32767): without VNNI, MLAS's
AVX2 and AVX-512BW kernels sum such pairs in saturating int16 (``vpmaddubsw``; onnxruntime's
quantization guide calls it the U8S8 saturation issue). 0 <= a <= 128 with 0 <= b <= 127 keeps
them at most 32512.
"""

from __future__ import annotations

import threading

import numpy as np

_LOCK = threading.Lock()
_SESSION = None


def _session():
    global _SESSION
    with _LOCK:
        if _SESSION is None:
            import onnxruntime as ort
            from onnx import TensorProto, helper

            graph = helper.make_graph(
                [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "intgemm",
                [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", "K"]),
                 helper.make_tensor_value_info("b", TensorProto.INT8, ["K", "N"])],
                [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", "N"])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3
            _SESSION = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
    return _SESSION


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out [M, N] int32 (C-contiguous) = a [M, K] uint8 @ b [K, N] int8, exact under the
    module's pair contract; returns out."""
    if a.dtype != np.uint8 or b.dtype != np.int8 or out.dtype != np.int32:
        raise TypeError("matmul takes uint8 @ int8 into int32")
    if not out.flags.c_contiguous or out.shape != (a.shape[0], b.shape[1]):
        raise ValueError("out must be a C-contiguous [M, N] array")
    if a.shape[0] == 0:
        return out
    session = _session()
    binding = session.io_binding()
    binding.bind_cpu_input("a", np.ascontiguousarray(a))
    binding.bind_cpu_input("b", np.ascontiguousarray(b))
    binding.bind_output("y", "cpu", 0, np.int32, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)
    return out
