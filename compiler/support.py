"""Which ONNX operators the compiler accepts, and which of their inputs must be constants.

Crossbars hold static weights, so e.g. a Conv's weight must be an initializer (or fold to one).
Any operator whose inputs are all constants is folded at compile time, whatever its type.
"""

from __future__ import annotations

# ONNX op type -> input positions that must be compile-time constants.
SUPPORTED: dict[str, frozenset[int]] = {k: frozenset(v) for k, v in {
    "Conv": {1, 2}, "Gemm": {1, 2}, "MatMul": {1},
    "BatchNormalization": {1, 2, 3, 4},
    "Relu": (), "LeakyRelu": (), "Clip": {1, 2}, "Sigmoid": (), "Tanh": (),
    "Add": (), "Sub": (), "Mul": (), "Div": (), "Sum": (), "Concat": (),
    "MaxPool": (), "AveragePool": (), "GlobalAveragePool": (), "GlobalMaxPool": (),
    "Flatten": (), "Reshape": {1}, "Transpose": (), "Squeeze": {1}, "Unsqueeze": {1},
    "Pad": {1, 2, 3}, "Softmax": (), "LRN": (),
    "Identity": (), "Dropout": {1, 2}, "Shape": (), "Constant": (), "ConstantOfShape": {0},
}.items()}

# Ops never folded even when their inputs are constant (they are random or have effects).
NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                          "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"})
