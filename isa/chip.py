"""Chip configuration: architecture (fixed at compile time), device, timing and energy.

A ``Chip`` is a frozen value loaded from TOML (stdlib ``tomllib``) and passed down explicitly.
The defaults below are the sourced numbers of ``shared/design.md`` section 6; presets in
``isa/chips/`` (package data, read with ``importlib.resources``) restate them or describe other
corners; ``load_chip`` takes a preset name or a TOML path. ``with_overrides`` applies
``section.key=value`` strings and rejects unknown keys and out-of-range values.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from .errors import IsaError
from .limits import GEOMETRY, check_geometry
from .program import ChipGeometry


@dataclass(frozen=True)
class Device:
    g_min_us: float = 1.0            # conductance range (design doc)
    g_max_us: float = 40.0
    program_sigma: float = 0.025     # programming noise, fraction of Gmax per write
    read_sigma: float = 0.01         # read noise, output-referred, per MVM
    stuck_at_gmin: float = 0.001     # fraction of cells stuck at Gmin / Gmax
    stuck_at_gmax: float = 0.001
    endurance_writes: float = 1e6    # writes per cell before failure
    write_voltage: float = 2.0       # V_w of a programming pulse
    wire_ohm: float = 0.0            # IR drop: wire resistance per cell segment (0: off)
    drift_nu: float = 0.0            # drift: G(t) = G(t0) (t / t0)^-nu (0: off)
    drift_seconds: float = 0.0       # time from programming to inference, t0 = 1 s


@dataclass(frozen=True)
class Timing:
    clock_ghz: float = 1.0           # cycles are reported at this clock
    mvm_step_ns: float = 100.0       # one input-bit step of an array read (ISAAC/PUMA)
    mvm_extra_steps: int = 2         # pipeline steps beyond input_bits per input vector
    write_iterations: int = 8        # program-and-verify iterations per phase (NeuroSim)
    t_pulse_ns: float = 50.0
    t_verify_ns: float = 20.0
    write_phases: int = 2            # SET then RESET, each row-sequential
    write_drivers: int = 0           # crossbars written at once; 0 = one driver per crossbar
    vector_lanes: int = 64           # elements per cycle of the vector unit
    buffer_bytes_per_cycle: int = 64  # scratchpad port bandwidth
    combiner_lanes: int = 32         # BasisN combiner lanes (vectors combined at once); 32: its
                                     # adders within 10 % of 64 crossbars' area (design-notes)
    combiner_acc_bits: int = 24      # accumulator width, per kernel and lane
    combiner_coef_bytes_per_cycle: int = 64  # coefficient SRAM port bandwidth
    combiner_analog: int = 0         # 1: the analog reading of BasisN's combiner (coefficient
                                     # bits steer basis-column currents onto summing lines,
                                     # each merged read a crossbar re-read; isa.combiner)
    digital_macs: int = 36           # digital unit (dmatmul) MACs a cycle; 36: its MAC area
                                     # equals the default combiner's 128 adders (default.toml)
    digital_weight_bytes_per_cycle: int = 64  # digital unit's weight SRAM port bandwidth


@dataclass(frozen=True)
class Energy:
    xbar_step_pj: float = 30.0       # array read per 100 ns step (ISAAC: 0.3 mW per array)
    adc_pj: float = 1.56             # per conversion (ISAAC: 8-bit 1.28 GS/s ADC at 2 mW)
    dac_pj: float = 0.39             # per row per step (1-bit DAC; ISAAC, default.toml)
    verify_row_pj: float = 0.0       # per verify read of a row, beyond its column conversions
                                     # (adc_pj each) and one array step (xbar_step_pj)
    write_pulse_pj: float = 1.38     # one pulse on one cell (PUMA: 22.6 nJ / 128x128 cells)
    vector_pj_per_elem: float = 1.0  # 16-bit add/mul class op (Horowitz 45 nm)
    buffer_pj_per_byte: float = 1.25  # SRAM scratchpad access (Horowitz: 10 pJ / 64 bit)
    combiner_read_pj: float = 0.1    # BasisN: one merged read of a projection register
    combiner_add_pj: float = 0.05    # one 16-bit integer add (Horowitz 45 nm: 8b 0.03, 32b 0.1)
    combiner_acc_pj: float = 0.1     # one shift-add into a 24-bit accumulator
    digital_mac_pj: float = 0.3      # digital unit: 8-bit multiply 0.2 + 32-bit add 0.1 (Horowitz)
    cmos_scale: float = 1.0          # factor on every CMOS logic and SRAM energy above and in
                                     # isa.combiner's SRAM table (Horowitz's 45 nm figures)
                                     # against the arrays' and converters' 32 nm ones


@dataclass(frozen=True)
class Area:
    """Per-component areas in mm2 at ISAAC's 32 nm (``isa.resources`` adds them up)."""
    xbar_mm2: float = 0.000025       # one 128x128 2-bit array (ISAAC: 8 arrays 0.0002 mm2)
    adc_mm2: float = 0.0012          # one 8-bit 1.28 GS/s ADC (ISAAC: 8 ADCs 0.0096 mm2)
    adcs_per_xbar: float = 1.0       # ISAAC: 8 ADCs per IMA of 8 arrays
    dac_mm2_per_row: float = 1.66e-7  # 1-bit DAC (ISAAC: 8 x 128 DACs 0.00017 mm2)
    sh_mm2_per_col: float = 3.9e-8   # sample-and-hold (ISAAC: 8 x 128 0.00004 mm2)
    adder_mm2: float = 0.00006       # a 16-24 bit adder + register (ISAAC shift-and-add)
    vector_lane_mm2: float = 0.0006  # 16-bit multiply-add lane (Horowitz, scaled to 32 nm)
    sram_mm2_per_byte: float = 1.27e-6  # buffer/coefficient memory (ISAAC eDRAM 64 KB 0.083)
    reg_mm2_per_byte: float = 3.0e-6  # accumulator register file (ISAAC OR 256 B 0.00077)
    write_driver_mm2: float = 0.0094  # an array's write periphery (NeuroSim V1.4, 32 nm)
    digital_mac_mm2: float = 0.000212  # 8-bit multiplier + 32-bit adder (Horowitz, to 32 nm)


@dataclass(frozen=True)
class Mapping:
    """How weights become cells, and the mitigations a careful user turns on (1 = on)."""
    per_column_scaling: int = 1  # one weight scale per crossbar column, else one per tensor
    differential: int = 1        # signed weights as differential pairs, else an offset
    raw_calibration: int = 1     # read-after-write: correct column gains from verify reads
    stuck_aware: int = 1         # re-encode weights around stuck cells found by verify reads
    slice_compensation: int = 1  # program slices MSB first; lower slices absorb the error the
                                 # verify reads measured on the higher ones
    adc_headroom: float = 1.0    # ADC full scale, times the column's largest possible current


@dataclass(frozen=True)
class Chip:
    arch: ChipGeometry = field(default_factory=ChipGeometry)
    device: Device = field(default_factory=Device)
    timing: Timing = field(default_factory=Timing)
    energy: Energy = field(default_factory=Energy)
    mapping: Mapping = field(default_factory=Mapping)
    area: Area = field(default_factory=Area)
    name: str = "default"

    def to_dict(self) -> dict:
        """The chip as plain data, a section a dict, new each call. (Every value is an int
        or a float, so no copy is needed: ``dataclasses.asdict``'s deep copies took 50 us,
        every run's report has one, and a one-image run takes 0.6 ms.)"""
        return {"name": self.name, **{s: {f.name: getattr(getattr(self, s), f.name)
                                          for f in dataclasses.fields(kind)}
                                      for s, kind in SECTIONS.items()}}


SECTIONS = {"arch": ChipGeometry, "device": Device, "timing": Timing, "energy": Energy,
            "mapping": Mapping, "area": Area}
INF = float("inf")
# key -> (lowest, highest, lowest excluded): the range in which a value means something
# physically. Keys not listed must be finite and not negative; arch keys use isa.limits.
RANGES: dict[str, tuple[float, float, bool]] = {
    **{k: (float(lo), float(hi), False) for k, (lo, hi) in GEOMETRY.items()},
    "program_sigma": (0, 1, False), "read_sigma": (0, 1, False),
    "stuck_at_gmin": (0, 1, False), "stuck_at_gmax": (0, 1, False),
    "g_max_us": (0, INF, True), "write_voltage": (0, INF, True),
    "endurance_writes": (1, INF, False),
    "clock_ghz": (0, INF, True), "mvm_step_ns": (0, INF, True),
    "write_iterations": (1, INF, False), "write_phases": (1, INF, False),
    "vector_lanes": (1, INF, False), "buffer_bytes_per_cycle": (1, INF, False),
    "combiner_lanes": (1, INF, False), "combiner_acc_bits": (1, 64, False),
    "combiner_coef_bytes_per_cycle": (1, INF, False), "adcs_per_xbar": (0, INF, True),
    "digital_macs": (1, INF, False), "digital_weight_bytes_per_cycle": (1, INF, False),
    **{k: (0, 1, False) for k in ("per_column_scaling", "differential", "raw_calibration",
                                  "stuck_aware", "slice_compensation", "combiner_analog")},
    "adc_headroom": (0, 16, True), "cmos_scale": (0, INF, True),
}


def _in_range(key: str, value) -> str | None:
    """None if ``value`` is allowed for ``key``, else the allowed range as text."""
    low, high, open_low = RANGES.get(key, (0, INF, False))
    ok = math.isfinite(value) and (value > low if open_low else value >= low) and value <= high
    if ok:
        return None
    return f"{'above' if open_low else 'at least'} {low:g}" + \
        (f" and at most {high:g}" if high < INF else "")


def _coerce(section: str, key: str, value, where: str):
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if key not in fields:
        raise IsaError(f"{where}: unknown key {section}.{key}; known: "
                       f"{', '.join(sorted(fields))}")
    typ = type(fields[key].default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IsaError(f"{where}: {section}.{key} must be a number, got {value!r}")
    if typ is int and (not math.isfinite(value) or float(value) != int(value)):
        raise IsaError(f"{where}: {section}.{key} must be an integer, got {value!r}")
    value = typ(value)
    allowed = _in_range(key, value)
    if allowed and typ is int and RANGES.get(key) == (0, 1, False):
        raise IsaError(f"{where}: {section}.{key} must be 0 or 1, got {value}")
    if allowed:
        raise IsaError(f"{where}: {section}.{key} = {value} is out of range (must be "
                       f"{allowed})")
    return value


def from_dict(data: dict, where: str = "chip config", base: Chip | None = None) -> Chip:
    """Build a Chip from nested dicts, on top of ``base`` (default: the default chip)."""
    chip = base or Chip()
    name = data.get("name", chip.name)
    parts = {}
    for section in SECTIONS:
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise IsaError(f"{where}: [{section}] must be a table")
        changes = {k: _coerce(section, k, v, where) for k, v in values.items()}
        parts[section] = dataclasses.replace(getattr(chip, section), **changes)
    unknown = set(data) - set(SECTIONS) - {"name", "description"}
    if unknown:
        raise IsaError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}; known: "
                       f"{', '.join(SECTIONS)}")
    check_geometry(parts["arch"], where)
    if parts["device"].g_min_us >= parts["device"].g_max_us:
        raise IsaError(f"{where}: device.g_min_us must be below device.g_max_us")
    return Chip(name=str(name), **parts)


def load_toml(path, base: Chip | None = None) -> Chip:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise IsaError(f"{path}: no such chip config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise IsaError(f"{path}: not valid TOML ({exc})") from None
    return from_dict(data, str(path), base)


def with_overrides(chip: Chip, assignments: list[str]) -> Chip:
    """Apply ``section.key=value`` strings (``--set``)."""
    data: dict = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise IsaError(f"--set {text!r}: expected section.key=value")
        try:
            number = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise IsaError(f"--set {text!r}: {value!r} is not a number") from None
        data.setdefault(section, {})[name] = number
    return from_dict(data, "--set", chip)


def presets() -> list[str]:
    """Names of the bundled chip presets (``isa/chips/NAME.toml``)."""
    return sorted(f.name[:-5] for f in resources.files("isa").joinpath("chips").iterdir()
                  if f.name.endswith(".toml"))


def chip_of(value) -> Chip | None:
    """A Chip as the Python API takes one: a Chip (or None) as it is, a preset name or a TOML
    path (str or os.PathLike) loaded; IsaError for anything else."""
    if value is None or isinstance(value, Chip):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_chip(os.fspath(value))
    raise IsaError(f"a chip must be an isa.chip.Chip, a preset name or a TOML path, not "
                   f"{type(value).__name__}")


def load_chip(spec: str | None = None, overrides: list[str] | None = None) -> Chip:
    """A preset name or a TOML path (default: the ``default`` preset), then ``--set``
    overrides. Raises IsaError naming the spec when it is neither."""
    spec = spec or "default"
    if spec in presets():
        with resources.as_file(resources.files("isa").joinpath("chips", f"{spec}.toml")) as path:
            chip = load_toml(path)
    elif os.path.isfile(spec):
        chip = load_toml(spec)
    elif os.path.isdir(spec):
        raise IsaError(f"chip {spec}: is a directory, not a TOML chip config")
    else:
        raise IsaError(f"chip {spec!r}: neither a preset ({', '.join(presets())}) nor a file")
    return with_overrides(chip, overrides or [])
