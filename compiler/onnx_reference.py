"""ONNX's reference evaluator, with our fixes: every whole-model or single-node evaluation of
ONNX in the compiler (constant folding, calibration, data-aware BasisN, the IR evaluator)
goes through ``reference_evaluator``; ``run_exposed`` runs a model on sample inputs with any
intermediate tensors exposed (calibration's activation ranges, BasisN's layer inputs)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_resize import Resize as OnnxResize

from isa import kernels

from . import conv_transpose, resize


class LRN(OpRun):
    """ONNX's reference LRN (onnx 1.23) sums the squares over the batch axis instead of the
    channels (onnx/onnx#7805, fixed after that release by onnx/onnx#8331): the spec's LRN."""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        return (kernels.lrn(x, size, alpha, beta, bias).astype(x.dtype),)


class ConvTranspose(OpRun):
    """ONNX's reference ConvTranspose (onnx 1.23) fails with groups and with output_shape:
    the spec's, computed as the compiler lowers it (``compiler.conv_transpose``)."""

    def _run(self, x, w, b=None, **attrs):
        plan = conv_transpose.plan(x.shape[2:], w, attrs)
        for axis, idx, wt in plan.spreads:
            x = kernels.interp(x, idx, wt, axis)
        n = x.ndim - 2
        return (kernels.conv(x, plan.weight, b, [1] * n, [0] * 2 * n, plan.dilations,
                             plan.group).astype(w.dtype),)


class BatchNormalization(OpRun):
    """ONNX's reference BatchNormalization at opsets 9-13 (onnx 1.23) fills in momentum and
    mixes the batch's statistics into the running ones (onnx/onnx#8442, open), so a
    calibration's ranges and a data-aware basis fit depended on the batch: the spec's
    inference mode, (x - mean) / sqrt(var + epsilon) x scale + bias over axis 1. Training
    mode (opset 14's training_mode, or statistics outputs) is refused before any run."""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None,
             training_mode=None, spatial=None):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        eps = 1e-5 if epsilon is None else epsilon
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * \
            scale.reshape(shape) + bias.reshape(shape)
        return (y.astype(x.dtype),)


class Resize(OnnxResize):
    """ONNX's reference Resize (onnx 1.23) puts align_corners' and pytorch_half_pixel's
    output length at scale x input length, where the operator's text and onnxruntime take the
    integer length: the compiler's (``compiler.resize``) from opset 11 on, for every
    coordinate transformation it lowers; onnx's own for the rest (tf_crop_and_resize, which
    only folds on constants, and opset 10's two inputs)."""

    def _run(self, x, *inputs, **attrs):
        mode = attrs.get("coordinate_transformation_mode") or "half_pixel"
        if self.run_params["opsets"].get("", 0) < 11 or mode not in resize.COORDINATES:
            return super()._run(x, *inputs, **attrs)
        roi, scales, sizes = (list(inputs) + [None] * 3)[:3]
        return (resize.resize(x, scales, sizes, attrs).astype(x.dtype),)


def reference_evaluator(proto, **options) -> ReferenceEvaluator:
    """``ReferenceEvaluator(proto, **options)`` with the fixed operators above."""
    return ReferenceEvaluator(proto, new_ops=[LRN, ConvTranspose, Resize, BatchNormalization],
                              **options)


def first_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's first graph input that is not an initializer (what samples feed)."""
    return model_inputs(model)[0]


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's graph inputs that are not initializers, in order (what samples feed)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


_FEED_TYPES = {onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.INT64: np.int64,
               onnx.TensorProto.INT32: np.int32}


def run_exposed(model: onnx.ModelProto, samples, names: Iterable[str],
                batch: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on ``samples`` (an array fed to ``first_input``, or {input name: array}
    for every input; each in its declared type: float32, bool or an integer) ``batch`` at a
    time (default: all at once; a last partial batch is left out), with the tensors ``names``
    exposed as extra outputs. Yields, per batch, {name: value} of the model's outputs, those
    tensors and the inputs."""
    arrays = samples if isinstance(samples, dict) else {first_input(model).name: samples}
    types = {i.name: _FEED_TYPES.get(i.type.tensor_type.elem_type, np.float32)
             for i in model_inputs(model)}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output} | set(arrays)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n)
                                for n in dict.fromkeys(names) if n not in known)
    outs = [o.name for o in exposed.graph.output]
    session = reference_evaluator(exposed)
    count = len(next(iter(arrays.values())))
    batch = batch or max(count, 1)
    for start in range(0, count - count % batch, batch):
        feeds = {k: v[start:start + batch].astype(types[k]) for k, v in arrays.items()}
        yield {**feeds, **dict(zip(outs, session.run(None, feeds)))}
