"""Figures and markdown from result files (matplotlib with the Agg backend).

Studies call these on the plain lists of their ``results.json``; nothing here
computes a measurement. Non-finite values are stored as ``None`` (null);
:func:`floats` reads them back as NaN.
"""

import math
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)

from minibn import backend, io  # noqa: E402
from minibn.nn import normalization  # noqa: E402

np = backend.host


def color(variant):
    """The colour of a normalizer in every study's figures (its registry entry)."""
    return normalization.get(variant).color


def label(variant):
    """A normalizer's name in legends and reports (its registry entry)."""
    return normalization.get(variant).label


def floats(values):
    """A float64 array from a list that may hold None (read as NaN)."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def window(steps, early=False):
    """Indices of the measurement points after step 0; ``early``: only the first 20% of them (at
    least one), docs/protocol.md's "early in training" (at step 0 a network can sit on a flat plateau)."""
    idx = [i for i, s in enumerate(steps) if s > 0]
    return idx[:max(1, math.ceil(0.2 * len(idx)))] if early else idx


def finite_median(values):
    """The median of the finite entries of ``values`` (None and NaN skipped); NaN when there are none."""
    a = floats(values)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else math.nan


def median_band(curves):
    """Median, min and max over curves of equal length (NaNs ignored where others are finite)."""
    stack = np.vstack([floats(c) for c in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmedian(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


def line_with_band(ax, x, curves, label, color=None, log=False):
    """Plot the median of ``curves`` with their min-max band (one curve: just the line)."""
    mid, lo, hi = median_band(curves)
    x = np.asarray(x)
    line, = ax.plot(x, mid, label=label, color=color, lw=1.3)
    if len(curves) > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")
    return line


def range_band(ax, x, lo, hi, label, color=None, log=True):
    """A shaded min-max band, e.g. the loss variation along the gradient at each step."""
    x = np.asarray(x)
    lo, hi = floats(lo), floats(hi)
    band = ax.fill_between(x, lo, hi, color=color, alpha=0.35, lw=0, label=label)
    ax.plot(x, lo, color=band.get_facecolor()[0], lw=0.6, alpha=0.9)
    ax.plot(x, hi, color=band.get_facecolor()[0], lw=0.6, alpha=0.9)
    if log:
        ax.set_yscale("log")
    return band


def ridge(ax, samples_by_step, steps, color="C0", overlap=1.8, bins=60, max_ridges=11):
    """A ridge plot: one histogram outline per measured step, stacked upwards (step 0 at the bottom);
    at most ``max_ridges`` evenly spaced steps (the first and last included), so ridges stay legible."""
    keep = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), max_ridges)).round().astype(int))
    samples_by_step, steps = [samples_by_step[i] for i in keep], [steps[i] for i in keep]
    finite = [np.asarray(s, dtype=float)[np.isfinite(np.asarray(s, dtype=float))] for s in samples_by_step]
    allv = np.concatenate([f for f in finite if f.size] or [np.zeros(1)])
    lo, hi = np.percentile(allv, [0.5, 99.5]) if allv.size > 1 else (allv.min() - 1, allv.max() + 1)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for k, values in enumerate(finite):
        hist, _ = np.histogram(values, bins=edges, density=True)
        peak = hist.max() or 1.0
        ax.fill_between(centres, k, k + overlap * hist / peak, color=color, alpha=0.35, lw=0.6, edgecolor="k")
    labels_at = np.linspace(0, len(steps) - 1, min(6, len(steps))).astype(int) if len(steps) else []
    ax.set_yticks(list(labels_at))
    ax.set_yticklabels([str(steps[i]) for i in labels_at])
    ax.set_ylabel("step")


def new_figure(nrows, ncols, width=4.2, height=3.2):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             constrained_layout=True)
    return fig, axes


def close(fig):
    plt.close(fig)


def save(fig, path):
    """Write ``fig`` to ``path`` (atomically) and free it."""
    io.write_figure(path, fig)
    plt.close(fig)


def table(header, rows):
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fmt(value, digits=3):
    """A float for a report: general format, 'nan'/'inf' spelled out, None as '-'."""
    if value is None:
        return "-"
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"
