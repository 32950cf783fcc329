"""What a program needs of the chip, as hardware: counts, memory bytes and area.

Pure functions of a program and a chip (``chip.area`` holds the per-component areas, mm2 at
ISAAC's 32 nm, with their sources in ``isa/chips/default.toml``). ``resources`` is what every
report carries, so mappings can be compared at equal area:

- crossbars: the program's ``xbars``; ADCs: ``area.adcs_per_xbar`` per crossbar (rounded up);
  one 1-bit DAC per row and one sample-and-hold per column of every crossbar;
- write drivers: ``timing.write_drivers``, or one per crossbar when that is 0;
- vector unit: ``timing.vector_lanes`` multiply-add lanes;
- BasisN's combiner (only if the program has ``combine``): ``timing.combiner_lanes`` lanes of
  N adders each (N: the widest unit's basis columns, ``isa.combiner.CombinerSize``), per lane
  one ``combiner_acc_bits`` accumulator per kernel of the widest layer, and the coefficient
  SRAM (every layer's levels at their bits); in the analog reading (``combiner_analog``) no
  adders and one accumulator per kernel (its summing-line switches are not counted);
- scratchpad: the peak byte the buffers reach (offset + float32 size), as SRAM;
- weight store: the weights a reprogramming program rewrites every inference, at
  ``weight_bits``, as SRAM (``weight_store_bytes``);
- the digital MAC unit (only if the program has ``dmatmul``): ``timing.digital_macs`` MACs
  and its weight SRAM (every dmatmul weight at ``weight_bits``, ``isa.digital``).
"""

from __future__ import annotations

import math

import numpy as np

from .chip import Chip
from .combiner import combiner_size, level_bytes, sram_pj_per_byte
from .digital import fetch_bytes_per_inference, has_dmatmul, weight_sram_bytes
from .program import Program

F32_BYTES = 4


def scratchpad_bytes(program: Program) -> int:
    """Peak scratchpad byte: the largest buffer offset + float32 size."""
    return max((b.offset + F32_BYTES * int(np.prod(b.type.shape, dtype=np.int64))
                for b in program.buffers), default=0)


def coef_fetch_bytes(program: Program, chip: Chip) -> float:
    """Coefficient bytes the combiner fetches per inference: each combine fetches its levels
    once per group of ``combiner_lanes`` vectors (lanes in lockstep share the fetch)."""
    blobs = program.blob_map()
    shapes = {b.name: b.type.shape for b in program.buffers}
    total = 0
    for ins in program.text:
        if ins.op == "combine":
            vectors = int(np.prod(shapes[ins.operands[0][1:]][:-1], dtype=np.int64))
            levels = blobs[ins.operands[2][1:]].data
            total += -(-vectors // chip.timing.combiner_lanes) * level_bytes(levels,
                                                                             ins.attr("bits"))
    return total / program.batch


def weight_store_bytes(program: Program) -> int:
    """Bytes of the weights a program rewrites during inference (``write`` after the
    ``inference`` barrier), at ``weight_bits`` each: reprogramming must keep them on chip
    and read them every inference, as BasisN keeps its coefficients. Weights written only in
    the load phase are not counted (they can come from off chip once)."""
    body, seen = False, set()
    for ins in program.text:
        if ins.op == "barrier" and ins.attr("label") == "inference":
            body = True
        elif body and ins.op == "write":
            seen.add(ins.operands[0][1:])
    blobs = program.blob_map()
    bits = program.chip.weight_bits
    return sum(-(-int(blobs[name].data.size) * bits // 8) for name in seen)


def digital_unit(program: Program, chip: Chip) -> tuple[dict, dict]:
    """The digital MAC unit's entries of the report and its area components (mm2): its MACs
    and weight SRAM when the program has ``dmatmul``, else zeros; its weight fetch per
    inference (bytes and pJ at the SRAM's read energy)."""
    used = has_dmatmul(program)
    macs = chip.timing.digital_macs if used else 0
    sram = weight_sram_bytes(program)
    fetch = fetch_bytes_per_inference(program)
    report = {"digital_macs": macs, "digital_fetch_bytes_per_inference": fetch,
              "digital_fetch_pj_per_inference": fetch * sram_pj_per_byte(sram)
              * chip.energy.cmos_scale}
    area = {"digital_macs": macs * chip.area.digital_mac_mm2,
            "digital_weight_sram": sram * chip.area.sram_mm2_per_byte}
    return report, area


def resources(program: Program, chip: Chip) -> dict:
    """Counts, bytes and area (mm2, per component and total) of ``program`` on ``chip``."""
    geo, t, a = program.chip, chip.timing, chip.area
    size = combiner_size(program)
    lanes = t.combiner_lanes if size.unit and not t.combiner_analog else 0
    adcs = math.ceil(geo.xbars * a.adcs_per_xbar)
    drivers = t.write_drivers or geo.xbars
    acc_files = lanes or (1 if size.unit else 0)  # analog reading: one accumulator per kernel
    acc_bytes = acc_files * size.kernels * t.combiner_acc_bits // 8
    scratch = scratchpad_bytes(program)
    store = weight_store_bytes(program)
    fetch = coef_fetch_bytes(program, chip) if size.unit else 0
    digital, digital_area = digital_unit(program, chip)
    area = {
        "crossbars": geo.xbars * a.xbar_mm2,
        "adcs": adcs * a.adc_mm2,
        "dacs": geo.xbars * geo.rows * a.dac_mm2_per_row,
        "sample_hold": geo.xbars * geo.cols * a.sh_mm2_per_col,
        "write_drivers": drivers * a.write_driver_mm2,
        "vector_unit": t.vector_lanes * a.vector_lane_mm2,
        "combiner_adders": lanes * size.unit * a.adder_mm2,
        "combiner_accumulators": acc_bytes * a.reg_mm2_per_byte,
        "coefficient_sram": size.coef_bytes * a.sram_mm2_per_byte,
        "scratchpad": scratch * a.sram_mm2_per_byte,
        "weight_store": store * a.sram_mm2_per_byte,
        **digital_area,
    }
    analog = area["crossbars"] + area["adcs"]
    combiner = area["combiner_adders"] + area["combiner_accumulators"]
    return {
        "crossbars": geo.xbars,
        "adcs": adcs,
        "dacs": geo.xbars * geo.rows,
        "write_drivers": drivers,
        "vector_lanes": t.vector_lanes,
        "combiner_lanes": lanes,
        "adders": {"combiner": lanes * size.unit, "vector": t.vector_lanes},
        "accumulator_bytes": acc_bytes,
        "sram_bytes": {"scratchpad": scratch, "coefficients": size.coef_bytes,
                       "weight_store": store, "digital_weights": weight_sram_bytes(program)},
        "coef_fetch_bytes_per_inference": fetch,
        "coef_fetch_pj_per_inference": fetch * sram_pj_per_byte(size.coef_bytes)
        * chip.energy.cmos_scale,
        "combiner_area_vs_xbars_adcs": combiner / analog if analog else 0.0,
        **digital,
        "area_mm2": sum(area.values()),
        "area_mm2_by_component": area,
    }
