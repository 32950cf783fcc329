"""Labels and the float reference: checked before a run, scored after it.

``check_labels`` validates labels against the program before any simulation (integer, one per
sample, every value a class of the program's only output); ``top1`` scores outputs against
them; ``reference_report`` compares outputs with the float model's.
"""

from __future__ import annotations

import os

import numpy as np

from isa import Program

from .errors import RunError


def classes(program: Program) -> int:
    """The class count of a program whose only output is [batch, classes]; RunError if not."""
    outs = program.outputs
    shapes = program.buffer_map()
    shape = shapes[outs[0].buffer].type.shape if len(outs) == 1 else ()
    if len(outs) == 1 and outs[0].ints:
        raise RunError(f"--labels scores [N, classes] logits; output {outs[0].name!r} holds "
                       "integers (an ArgMax's indices): compare them with the labels instead")
    if len(shape) != 2:
        got = ", ".join(f"{p.name} {list(shapes[p.buffer].type.shape)}" for p in outs)
        raise RunError(f"--labels needs a program with one [N, classes] output; it has {got}")
    return shape[1]


def check_labels(labels, samples: int, n_classes: int, path: str) -> np.ndarray:
    """``labels`` as a 1-D int64 array, or RunError naming ``path`` and what is wrong."""
    if isinstance(labels, dict) or not np.issubdtype(labels.dtype, np.integer):
        kind = "an .npz archive" if isinstance(labels, dict) else f"dtype {labels.dtype}"
        raise RunError(f"--labels {path}: {kind}; expected a .npy of integer class labels")
    labels = labels.reshape(-1).astype(np.int64)
    if len(labels) != samples:
        raise RunError(f"--labels {path}: {len(labels)} labels for {samples} input samples")
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise RunError(f"--labels {path}: {int(bad.sum())} label(s) outside the output's "
                       f"{n_classes} classes 0..{n_classes - 1} (first: {labels[bad][0]})")
    return labels


def top1(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the only output [N, classes] against checked labels."""
    (logits,) = outputs.values()
    return float((logits.argmax(1) == labels).mean())


def check_reference(path: str, want: dict[str, np.ndarray], program: Program,
                    samples: int) -> None:
    """The float model (``want``: its outputs by name on the run's inputs) has every output
    of the program, by name, in the shape a run of ``samples`` compiled batches gives it;
    raise RunError naming the first that differs."""
    buffers = program.buffer_map()
    for port in program.outputs:
        if port.name not in want:
            raise RunError(f"--reference {path}: the model has no output {port.name!r} (its "
                           f"outputs: {', '.join(map(repr, want)) or 'none'}); compare with "
                           "the model the program was compiled from")
        shape = buffers[port.buffer].type.shape
        expected = (shape[0] * samples, *shape[1:]) if shape else ()
        if np.shape(want[port.name]) != expected:
            raise RunError(f"--reference {path}: output {port.name!r} is "
                           f"{list(np.shape(want[port.name]))}; the program's is "
                           f"{list(expected)}")


def reference_report(path: str, want: dict[str, np.ndarray], program: Program,
                     outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> dict:
    """The float model's accuracy and each output's largest error relative to it (``want``:
    its outputs by name, ``check_reference``'d)."""
    errors = {k: float(np.abs(v - want[k]).max() / max(np.abs(want[k]).max(), 1e-30))
              for k, v in outputs.items() if k in want}
    out = {"reference": os.path.abspath(path), "reference_relative_error": errors}
    if labels is not None:
        out["reference_accuracy"] = top1({"y": want[program.outputs[0].name]}, labels)
    return out
