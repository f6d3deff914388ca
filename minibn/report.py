"""Figures and markdown from result files: one style, one palette, no measurement.

Reports call these on the plain lists of a results document (:mod:`minibn.results` reads it);
nothing here computes a measurement or judges a claim. Matplotlib (with the Agg backend) is
imported by the first figure, not by importing this module, so the markdown helpers
(:func:`table`, :func:`fmt`, :func:`label`) cost no plotting library.
"""

import argparse
import functools
import math
import os
import sys
import warnings

from minibn import backend, io, results
from minibn.nn import normalization
from minibn.results import floats

np = backend.host

#: Colours handed to the normalizers: matplotlib's ten-colour cycle, then ten more.
PALETTE = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "#b8860b", "#8b0000", "#006400",
           "#4b0082", "#ff1493", "#2f4f4f", "#000080", "#808000", "#cd5c5c", "#20b2aa")


@functools.lru_cache(maxsize=None)
def _pyplot():
    """matplotlib's pyplot on the Agg backend: figures are files, whatever MPLBACKEND the shell sets
    (matplotlib reads it when it is first imported, and refuses a name it does not know)."""
    asked = os.environ.pop("MPLBACKEND", None)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    finally:
        if asked is not None:
            os.environ["MPLBACKEND"] = asked
    return plt


def colors():
    """``{variant: colour}`` of every registered normalizer: the colour its entry names where it names
    one (an override), else, in the registry's order, the first colour of :data:`PALETTE` that no
    other entry has (a user's normalizer never gets a colour already taken)."""
    taken = {entry.color for entry in normalization.REGISTRY.values() if entry.color}
    free = (c for c in PALETTE if c not in taken)
    return {name: entry.color or next(free, "k") for name, entry in normalization.REGISTRY.items()}


def color(variant):
    """The colour of a normalizer in every study's figures (:func:`colors`)."""
    return colors()[normalization.get(variant).name]


def label(variant):
    """A normalizer's name in legends and reports (its registry entry)."""
    return normalization.get(variant).label


#: The largest magnitude a figure draws: values beyond it (a diverging run reaches 1e260 and
#: more) are drawn at it, because matplotlib's log axes overflow near 1e280 and its histograms
#: cannot bin a range wider than float64's resolution allows.
DRAW_LIMIT = 1e100


def drawable(values, log=False):
    """``values`` as a float array a figure can draw: None, NaN and infinities become NaN (the
    line stops there), magnitudes are clipped to :data:`DRAW_LIMIT` (and, for a ``log`` axis,
    values <= 0 become NaN and tiny ones are raised to 1 / DRAW_LIMIT)."""
    a = floats(values)
    a[~np.isfinite(a)] = math.nan
    with np.errstate(invalid="ignore"):
        a = np.clip(a, -DRAW_LIMIT, DRAW_LIMIT)
        if log:
            a = np.where(a > 0, np.maximum(a, 1.0 / DRAW_LIMIT), math.nan)
    return a


def log_scale(ax, *arrays, axis="y"):
    """Put ``ax`` on a log ``axis`` when one of ``arrays`` (already :func:`drawable` with ``log``)
    has a value to show; an axis with nothing positive stays linear (matplotlib refuses to
    log-scale it)."""
    if any(np.isfinite(a).any() for a in arrays):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def last_drawn(steps, values):
    """``(step, value)`` of the last finite value (None when there is none): where a diverged
    run's curve ends."""
    a = floats(values)
    finite = np.flatnonzero(np.isfinite(a))
    return (steps[finite[-1]], float(a[finite[-1]])) if finite.size else None


def mark_divergence(ax, steps, values, diverged_at, color=None):
    """An ``x`` where a diverged run's curve ends (nothing for a run that did not diverge); its
    step is in the legend (:func:`diverged_label`)."""
    end = None if diverged_at is None else last_drawn(steps, values)
    if end is not None:
        ax.plot([end[0]], [end[1]], "x", color=color, ms=7, mew=1.5)


def diverged_label(name, runs):
    """``name``, plus "(diverged at step t)" (seed by seed when several) for the diverged ``runs``."""
    diverged = [r for r in runs if r.get("diverged_at") is not None]
    if not diverged:
        return name
    if len(runs) == 1:
        return f"{name} (diverged at step {diverged[0]['diverged_at']})"
    return f"{name} (diverged: " + ", ".join(f"seed {r.get('seed')} at step {r['diverged_at']}" for r in diverged) + ")"


def aligned(runs, steps_of, values_of, missing=None):
    """``(steps, curves)``: each run's curve over the longest run's steps, a shorter one (a seed
    that diverged earlier) padded with ``missing`` (not drawn), for a median and band over seeds."""
    steps = max((steps_of(run) for run in runs), key=len)
    curves = [list(values_of(run)) for run in runs]
    return steps, [c + [missing] * (len(steps) - len(c)) for c in curves]



def median_band(curves):
    """Median, min and max over curves of equal length (NaNs ignored where others are finite)."""
    stack = np.vstack([floats(c) for c in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmedian(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


def line_with_band(ax, x, curves, label, color=None, log=False, **line_style):
    """Plot the median of ``curves`` with their min-max band (one curve: just the line);
    ``line_style``: matplotlib's line keywords (``ls``, ``lw``, ``marker``, ...)."""
    mid, lo, hi = (drawable(a, log) for a in median_band(curves))
    x = np.asarray(x)
    line, = ax.plot(x, mid, label=label, color=color, **{"lw": 1.3, **line_style})
    if len(curves) > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if log:
        log_scale(ax, mid, lo, hi)
    return line


def range_band(ax, x, lo, hi, label, color=None, log=True):
    """A shaded min-max band, e.g. the loss variation along the gradient at each step."""
    x = np.asarray(x)
    lo, hi = drawable(lo, log), drawable(hi, log)
    band = ax.fill_between(x, lo, hi, color=color, alpha=0.35, lw=0, label=label)
    ax.plot(x, lo, color=band.get_facecolor()[0], lw=0.6, alpha=0.9)
    ax.plot(x, hi, color=band.get_facecolor()[0], lw=0.6, alpha=0.9)
    if log:
        log_scale(ax, lo, hi)
    return band


def histogram_edges(values, bins, trim=0.5):
    """``bins + 1`` edges over the ``trim``..100-``trim`` percentiles of the finite ``values`` (the
    range widened where it is empty or too narrow for ``bins`` distinct float64 edges); values are
    clipped to :data:`DRAW_LIMIT` first."""
    a = drawable(np.ravel(values))
    a = a[np.isfinite(a)]
    lo, hi = np.percentile(a, [trim, 100 - trim]) if a.size > 1 else (a.min(), a.max()) if a.size else (0.0, 0.0)
    centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    # one value (or one repeated): a unit either side; else enough ulps for distinct edges
    half = max(half if half > 0 else 1.0, 64 * bins * np.spacing(abs(centre)))
    return np.linspace(centre - half, centre + half, bins + 1)


def _finite_rows(samples):
    """The finite values (:func:`drawable`) of each row of ``samples``: one row per seed (a 1-D
    ``samples`` is one seed)."""
    rows = np.atleast_2d(np.asarray(samples, dtype=float))
    return [a[np.isfinite(a)] for a in drawable(rows.ravel()).reshape(rows.shape)]


def _densities(rows, edges):
    """Density histograms of ``rows`` on ``edges``; a row with no value has none (zeros)."""
    return [np.histogram(a, bins=edges, density=True)[0] if a.size else np.zeros(len(edges) - 1) for a in rows]


def histogram_with_band(ax, samples, label, color=None, bins=50):
    """The outline of the density histogram of ``samples`` (one row per seed, or 1-D for one):
    several seeds give the median density on shared edges and its min-max band; returns the
    edges (None when no value is finite)."""
    rows = _finite_rows(samples)
    if not any(a.size for a in rows):
        return None
    edges = histogram_edges(np.concatenate(rows), bins, trim=0)
    mid, lo, hi = median_band(_densities(rows, edges))
    ax.stairs(mid, edges, color=color, label=label, lw=1.2)
    if len(rows) > 1:
        ax.stairs(hi, edges, baseline=lo, fill=True, color=color, alpha=0.2, lw=0)
    return edges


def ridge(ax, samples_by_step, steps, color="C0", overlap=1.8, bins=60, max_ridges=11):
    """A ridge plot: one histogram outline per measured step, stacked upwards (step 0 at the bottom);
    at most ``max_ridges`` evenly spaced steps (the first and last included), so ridges stay legible.
    A step's samples may hold one row per seed: its ridge is then the median density with its
    min-max band over seeds."""
    keep = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), max_ridges)).round().astype(int))
    samples_by_step, steps = [samples_by_step[i] for i in keep], [steps[i] for i in keep]
    finite = [_finite_rows(s) for s in samples_by_step]
    edges = histogram_edges(np.concatenate([np.zeros(0)] + [a for rows in finite for a in rows]), bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for k, rows in enumerate(finite):
        mid, lo, hi = median_band(_densities(rows, edges))
        peak = hi.max() or 1.0
        ax.fill_between(centres, k, k + overlap * mid / peak, color=color, alpha=0.35, lw=0.6, edgecolor="k")
        if len(rows) > 1:
            ax.fill_between(centres, k + overlap * lo / peak, k + overlap * hi / peak, color=color, alpha=0.15, lw=0)
    labels_at = np.linspace(0, len(steps) - 1, min(6, len(steps))).astype(int) if len(steps) else []
    ax.set_yticks(list(labels_at))
    ax.set_yticklabels([str(steps[i]) for i in labels_at])
    ax.set_ylabel("step")


def new_figure(nrows, ncols, width=4.2, height=3.2):
    fig, axes = _pyplot().subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             constrained_layout=True)
    return fig, axes


def close(fig):
    _pyplot().close(fig)


def save(fig, path):
    """Write ``fig`` to ``path`` (atomically) and free it."""
    io.write_figure(path, fig)
    _pyplot().close(fig)


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


def write_markdown(folder, text):
    """``folder/report.md``: the generated ``text``, then ``folder/notes.md`` where there is one (a note
    written by hand on how the run was made, which a rebuilt report must keep)."""
    notes = os.path.join(folder, "notes.md")
    if os.path.exists(notes):
        with open(notes, encoding="utf-8") as f:
            text = text.rstrip("\n") + "\n\n" + f.read()
    io.write_text(os.path.join(folder, "report.md"), text)


def main(prog, write, study, argv=None):
    """``python -m PROG DIR``: rebuild the figures, claims.json and report.md of DIR, a folder of the
    study ``study``, with ``write(DIR, doc, arrays)`` from DIR's results alone
    (:func:`minibn.results.read`); the exit status. A folder without results.json, or of another
    study, is a usage error (2); a damaged results file or a folder that cannot be written is one
    line (1). Nothing is written before the folder's results are read and known to be ``study``'s."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}",
                                description="Rebuild the figures, claims.json and report.md of a results folder from "
                                            "its results.json (and results.npz, where there is one) alone.")
    p.add_argument("dir", help="the study's output folder (its --out)")
    folder = p.parse_args(argv).dir
    if not os.path.isfile(os.path.join(folder, "results.json")):
        p.error(f"{folder} has no results.json: give the folder a study wrote (its --out)")
    try:
        doc, arrays = results.read(folder)
    except io.DamagedFile as err:
        print(f"error: {err}; run the study's command again with --resume to rewrite it from the runs it kept, "
              f"or give another folder", file=sys.stderr)
        return 1
    if doc.get("study") != study:
        p.error(f"{folder} holds {'a ' + str(doc['study']) + ' study' if doc.get('study') else 'no study'}'s "
                f"results, not a {study} study's: its report command is python -m minibn.studies."
                f"{doc.get('study', 'NAME')}_report")
    try:
        write(folder, doc, arrays)
    except OSError as err:
        print(f"error: the report of {folder} could not be written: {err}", file=sys.stderr)
        return 1
    print(os.path.join(folder, "report.md"))
    return 0
