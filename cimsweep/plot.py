"""The standard figures of a results table (``cimsweep plot``).

The table's setting columns are those before ``seed`` (the sweep's axes: model, the grid's
keys, case). Each figure is drawn only when the table has what it needs:

- ``accuracy-vs-AXIS``: for every numeric axis with several values, mean accuracy over seeds
  with a standard-deviation error bar (population, ddof 0), one line per combination of the
  other axes;
- ``edp-vs-crossbars`` and ``edp-vs-area``: EDP against the crossbars each program uses and
  against the chip's area, one line per mapping (per model when there is no mapping axis),
  log scales;
- ``pareto-edp`` and ``pareto-area``: every setting's mean accuracy against its EDP (or area),
  the Pareto-optimal settings joined and labelled.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from isa.files import write_atomic

from .errors import SweepError
from .results import read_table


def _axes(rows: list[dict]) -> list[str]:
    columns = list(rows[0])
    if "seed" not in columns:
        raise SweepError("not a cimsweep results table: it has no seed column")
    return columns[:columns.index("seed")]


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label(keys: list[str], values: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values)) or "all"


def _by_setting(rows: list[dict], axes: list[str], metric: str) -> dict[tuple, list[float]]:
    """The ``metric`` of every ok row, grouped by its settings (over seeds)."""
    out: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get(metric) is not None:
            out[tuple(r[a] for a in axes)].append(float(r[metric]))
    return out


def accuracy_figures(rows, axes, save) -> list[str]:
    written = []
    if not any(r.get("accuracy") is not None for r in rows):
        return written
    groups = _by_setting(rows, axes, "accuracy")
    for i, axis in enumerate(axes):
        values = sorted({k[i] for k in groups}, key=str)
        if len(values) < 2 or not _numeric(values):
            continue
        others = [a for a in axes if a != axis]
        lines: dict[tuple, list] = defaultdict(list)
        for key, accs in groups.items():
            rest = tuple(v for j, v in enumerate(key) if j != i)
            lines[rest].append((key[i], 100 * np.mean(accs), 100 * np.std(accs), len(accs)))
        fig, ax = _figure()
        for rest, points in sorted(lines.items(), key=lambda kv: str(kv[0])):
            points.sort()
            xs, ys, es, ns = zip(*points)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                        label=_label(_varying(others, lines), _pick(others, lines, rest)))
        seeds = max(n for pts in lines.values() for *_, n in pts)
        ax.set(xlabel=axis, ylabel="top-1 accuracy (%)",
               title=f"accuracy against {axis} (mean, std over {seeds} seeds)")
        written.append(save(fig, ax, f"accuracy-vs-{axis.replace('.', '_')}"))
    return written


def _varying(keys: list[str], lines: dict) -> list[str]:
    """The keys whose values differ between lines (the others are constant: not labelled)."""
    return [k for j, k in enumerate(keys) if len({rest[j] for rest in lines}) > 1]


def _pick(keys: list[str], lines: dict, rest: tuple) -> tuple:
    varying = set(_varying(keys, lines))
    return tuple(v for k, v in zip(keys, rest) if k in varying)


def edp_figures(rows, axes, save) -> list[str]:
    """EDP against the crossbars each program uses and against its area, one line per
    mapping (per model without a mapping axis), where either varies."""
    written = []
    for x, label, name in (("crossbars", "crossbars on the chip", "crossbars"),
                           ("area_mm2", "chip area (mm2)", "area")):
        ok = [r for r in rows if r.get("status") == "ok" and r.get("edp") is not None
              and r.get(x) is not None]
        if len({r[x] for r in ok}) < 2:
            continue
        split = ["mapping"] if "mapping" in axes else ["model"]  # a line per mapping
        lines: dict[tuple, dict] = defaultdict(dict)
        for r in ok:
            lines[tuple(r[a] for a in split)][r[x]] = r["edp"]
        fig, ax = _figure()
        for rest, points in sorted(lines.items(), key=lambda kv: str(kv[0])):
            xs = sorted(points)
            ax.plot(xs, [points[v] for v in xs], marker="o",
                    label=_label(_varying(split, lines), _pick(split, lines, rest)))
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="EDP per inference (pJ*ns)",
               title=f"energy-delay product against {label.split(' (')[0]}")
        written.append(save(fig, ax, f"edp-vs-{name}"))
    return written


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both cost (lower) and accuracy (higher)."""
    front, best = [], -np.inf
    for cost, acc, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc, name))
            best = acc
    return front


def pareto_figures(rows, axes, save) -> list[str]:
    written = []
    for cost, label, log in (("edp", "EDP per inference (pJ*ns)", True),
                             ("area_mm2", "chip area (mm2)", False)):
        accs = _by_setting(rows, axes, "accuracy")
        costs = _by_setting(rows, axes, cost)
        keys = [k for k in accs if k in costs]
        if len(keys) < 2:
            continue
        names = {k: _label(_varying(axes, dict.fromkeys(keys)), _pick(
            axes, dict.fromkeys(keys), k)) for k in keys}
        points = [(float(np.mean(costs[k])), 100 * float(np.mean(accs[k])), names[k])
                  for k in keys]
        front = pareto(points)
        fig, ax = _figure()
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, color="0.6",
                   label="settings (mean over seeds)")
        ax.plot([p[0] for p in front], [p[1] for p in front], marker="o", color="C3",
                label="Pareto front")
        for x, y, name in front:
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.set(xlabel=label, ylabel="top-1 accuracy (%)", xscale="log" if log else "linear",
               title=f"accuracy against {cost}: Pareto front")
        written.append(save(fig, ax, f"pareto-{cost.split('_')[0]}"))
    return written


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(6.4, 4.2))


def plot_results(path: str, out: str | None = None) -> list[str]:
    """Draw every standard figure ``path``'s columns allow; the PNG files written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SweepError("cimsweep plot needs matplotlib: pip install 'cimstack[sweep]'"
                         ) from None
    rows = read_table(path)
    if not rows:
        raise SweepError(f"{path}: no rows to plot")
    stem = os.path.splitext(os.path.basename(path))[0]
    directory = out or os.path.dirname(os.path.abspath(path))
    if out and not os.path.isdir(out):
        raise SweepError(f"-o {out}: no such directory")

    def save(fig, ax, name: str) -> str:
        import matplotlib.pyplot as plt
        ax.grid(True, lw=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        target = os.path.join(directory, f"{stem}.{name}.png")
        write_atomic(target, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        return target
    axes = _axes(rows)
    written = accuracy_figures(rows, axes, save) + edp_figures(rows, axes, save) \
        + pareto_figures(rows, axes, save)
    if not written:
        raise SweepError(f"{path}: no figure applies (no numeric axis with several values, "
                         "no EDP over several crossbar counts, no accuracy against a cost)")
    return written
