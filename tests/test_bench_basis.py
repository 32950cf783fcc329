"""The equal-area arithmetic of tools/bench_basis.py: how many MACs or crossbars a chip gets
within another's compute area (hand-computed from the default chip's areas)."""

from __future__ import annotations

import dataclasses
import math

from isa.chip import Chip
from tools.bench_basis import crossbars_within, macs_within, per_xbar_area, replaced


def test_macs_within_adds_what_the_spare_area_buys():
    chip = Chip()  # 36 MACs of 0.000212 mm2
    assert macs_within(chip, 1.0, 0.5) == 36 + 2358  # 0.5 / 0.000212 = 2358.5
    assert macs_within(chip, 0.5, 0.5) == 36


def test_macs_within_takes_macs_away_where_larger_ones_overshoot():
    chip = replaced(Chip(), "area", digital_mac_mm2=0.001)  # its own 36 MACs: 0.036 mm2
    assert macs_within(chip, 0.5, 0.5 + 0.0205) == 36 - 21  # floor(-20.5) = -21
    assert macs_within(chip, 0.0, 1.0) == 1  # at least one


def test_crossbars_within_counts_a_crossbar_with_its_periphery():
    chip = Chip()
    one = per_xbar_area(chip)
    a, g = chip.area, chip.arch
    assert one == a.xbar_mm2 + a.adcs_per_xbar * a.adc_mm2 + g.rows * a.dac_mm2_per_row \
        + g.cols * a.sh_mm2_per_col + a.write_driver_mm2
    assert crossbars_within(chip, 1.0 + 2.5 * one, 1.0, 64) == 66
    assert crossbars_within(chip, 0.5, 1.0, 64) == 64  # never fewer than it has
    shared = dataclasses.replace(chip, timing=dataclasses.replace(chip.timing, write_drivers=4))
    assert math.isclose(per_xbar_area(shared), one - a.write_driver_mm2)
