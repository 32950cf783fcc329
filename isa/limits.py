"""Physical and practical limits on chip geometry, checked wherever a geometry enters.

A geometry comes from ``cimc`` flags, a chip TOML's ``[arch]`` or a ``.cim`` header that
someone else wrote; all three are checked here before anything is sized by them, so a header
that claims a billion crossbars fails at once instead of allocating for it.
"""

from __future__ import annotations

from .errors import IsaError
from .program import ChipGeometry

# field -> (lowest, highest) accepted value, with why the bound is where it is.
GEOMETRY = {
    "xbars": (1, 1 << 20),       # a million arrays: 80x ResNet-50's 12,504 weight tiles
    "rows": (1, 8192),           # fabricated RRAM arrays are 64..1024 rows
    "cols": (2, 8192),
    "cell_bits": (1, 8),         # multi-level cells hold 1..4 bits in the literature
    "weight_bits": (2, 16),      # a sign and at least one magnitude bit; int16 at most
    "input_bits": (1, 16),
    "dac_bits": (1, 16),
    "adc_bits": (1, 16),
}


def check_geometry(chip: ChipGeometry, where: str = "chip") -> ChipGeometry:
    """Return ``chip`` if every field is within ``GEOMETRY`` and one weight fits a crossbar
    row; else raise IsaError naming ``where`` and the field."""
    for name, (low, high) in GEOMETRY.items():
        value = getattr(chip, name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise IsaError(f"{where}: {name} = {value!r} is out of range ({low}..{high})")
    if chip.cols < 2 * chip.slices:
        raise IsaError(f"{where}: cols = {chip.cols} cannot hold one {chip.weight_bits}-bit "
                       f"weight ({chip.slices} slices x 2 differential cells)")
    return chip
