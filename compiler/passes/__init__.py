"""The pass registry and the default pipeline (an ordered list of pass names)."""

from . import (
               allocate_buffers,
               basis_decompose,
               canonicalize,
               fold_batchnorm,
               fuse_activation,
               lower_to_crossbar,
               schedule,
)

PASSES = {
    "canonicalize": canonicalize.run,
    "fold-batchnorm": fold_batchnorm.run,
    "fuse-activation": fuse_activation.run,
    "lower-to-crossbar": lower_to_crossbar.run,
    "basis-decompose": basis_decompose.run,
    "schedule": schedule.run,
    "allocate-buffers": allocate_buffers.run,
}

PIPELINE = list(PASSES)
