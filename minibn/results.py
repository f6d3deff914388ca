"""A study's results folder, read back: the wall between a run and its conclusions.

After a study has run, nothing imports the study: its report and its rulebook
(:mod:`minibn.claims`) read what this module reads, ``results.json`` and ``results.npz``.
What a report needs from its study (the variants a preset runs, the normalizers compared
with BN, the DLN's setting at each width) is written into the results' config by the study,
and every run records what a claim about it needs.

A run of the DLN and VGG studies is named by one :class:`Run` record, ``Run(variant, lr,
seed).name``; a learning rate is the one float the study trained with, so runs are found by
name, never by a tolerance search. No plotting library is imported here.

Non-finite values are stored as ``null``; :func:`floats` reads them back as NaN.
"""

import math
import os
from typing import NamedTuple

from minibn import backend, io
from minibn.nn import normalization

np = backend.host

#: How results.npz of the VGG study stored the "/" of an array's name before both studies
#: wrote names as they are; :func:`read` accepts either.
OLD_NPZ_SEP = "__"


class Run(NamedTuple):
    """One run of a study: ``Run("batchnorm", 0.1, 0).name == "batchnorm_lr0.1_seed0"``."""

    variant: str
    lr: float
    seed: int

    @property
    def name(self):
        return f"{self.variant}_lr{self.lr:g}_seed{self.seed}"

    @classmethod
    def of(cls, record):
        """The :class:`Run` a run's result record belongs to."""
        return cls(record["variant"], record["lr"], record["seed"])


# --- the folder ----------------------------------------------------------------------------

def read(folder):
    """``(doc, arrays)``: ``folder/results.json`` and the arrays of ``folder/results.npz`` ({} without
    one); :class:`minibn.io.DamagedFile` naming the file that cannot be read."""
    doc = io.read_json(os.path.join(folder, "results.json"))
    path = os.path.join(folder, "results.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise io.DamagedFile(f"{path} is damaged (no 'config' record)")
    if "checks" not in doc and not (isinstance(doc.get("runs"), dict) and doc["runs"]):   # theory: checks, no runs
        raise io.DamagedFile(f"{path} is damaged (it records no runs)")
    npz = os.path.join(folder, "results.npz")
    arrays = {}
    if os.path.exists(npz):
        try:
            with np.load(npz, allow_pickle=False) as stored:
                arrays = {key.replace(OLD_NPZ_SEP, "/"): stored[key] for key in stored.files}
        except Exception as err:  # zip, zlib, pickle-refusal errors of a cut-short or overwritten file
            raise io.DamagedFile(f"{npz} is damaged ({type(err).__name__}: {err})") from None
    return _named_by_run(doc, arrays)


def _named_by_run(doc, arrays):
    """Results of a study made before studies took seeds (one ``config.seed``, runs named without it)
    as today's: each run with its seed, named by its :class:`Run`, and its arrays renamed with it."""
    seed, runs = doc["config"].get("seed"), doc.get("runs")
    if "seeds" in doc["config"] or seed is None or not isinstance(runs, dict):
        return doc, arrays
    renamed = {old: Run(run["variant"], run["lr"], seed).name for old, run in runs.items()}
    runs = {renamed[old]: {**run, "seed": seed} for old, run in runs.items()}
    arrays = {"/".join([renamed.get(run, run), *rest]): a for key, a in arrays.items()
              for run, *rest in [key.split("/")]}
    return {**doc, "config": {**doc["config"], "seeds": [seed]}, "runs": runs}, arrays


def write(folder, doc, arrays=None):
    """``folder/results.json`` and, when there are ``arrays`` (``{name: array}``), ``folder/results.npz``,
    each written atomically."""
    io.write_json(os.path.join(folder, "results.json"), doc)
    if arrays:
        io.write_npz(os.path.join(folder, "results.npz"), **arrays)


def split_arrays(doc, split_run):
    """``(slim_doc, arrays)``: each run of ``doc`` through ``split_run(name, run) -> (slim_run,
    {array name: array})``, which moves what is too big for results.json into arrays."""
    runs, arrays = {}, {}
    for name, run in doc["runs"].items():
        runs[name], moved = split_run(name, run)
        arrays.update(moved)
    return {**doc, "runs": runs}, arrays


def stack_ragged(lists, dtype=float):
    """Rows of unequal length (values may be None) as one array, padded with NaN."""
    width = max((len(v) for v in lists), default=0)
    out = np.full((len(lists), width), np.nan)
    for i, v in enumerate(lists):
        out[i, :len(v)] = floats(v)
    return out.astype(dtype, copy=False)


# --- the runs of a document ----------------------------------------------------------------

def seeds_of(doc):
    """The seeds of the runs in ``doc``, in order."""
    return sorted({run["seed"] for run in doc["runs"].values()})


def lrs_of(doc):
    """The learning rates of the runs in ``doc``, largest first."""
    return sorted({run["lr"] for run in doc["runs"].values()}, reverse=True)


def finder(doc, seed, prefix=""):
    """``get(variant, lr)``: the run ``prefix + Run(variant, lr, seed).name`` of ``doc`` (None when the
    study did not train it)."""
    def get(variant, lr):
        return doc["runs"].get(prefix + Run(variant, lr, seed).name)
    return get


def runs_over_seeds(doc, variant, lr):
    """The runs of ``variant`` at ``lr``, one per seed in seed order (empty when none was trained)."""
    found = (doc["runs"].get(Run(variant, lr, seed).name) for seed in seeds_of(doc))
    return [run for run in found if run is not None]


def groups(doc):
    """``{(variant, lr): [runs over seeds]}`` in the order the runs appear in ``doc``."""
    out = {}
    for run in doc["runs"].values():
        out.setdefault((run["variant"], run["lr"]), []).append(run)
    return out


def name_of(doc, run):
    """The name ``doc`` keeps ``run`` under."""
    return next(name for name, r in doc["runs"].items() if r is run)


def added_normalizers(doc):
    """The variants of ``doc`` beyond those its preset runs (``config.default_variants``), in the
    registry's order (a variant not registered here last)."""
    default = doc["config"]["default_variants"]
    added = dict.fromkeys(run["variant"] for run in doc["runs"].values() if run["variant"] not in default)
    order = list(normalization.REGISTRY)
    return sorted(added, key=lambda v: order.index(v) if v in order else len(order))


def compared(cfg):
    """BN and the normalizers a VGG study ran beside it (``--variants``; none in studies before it)."""
    return ["batchnorm", *(v for v in cfg.get("variants", []) if v != "batchnorm")]


# --- values of a run -----------------------------------------------------------------------

def floats(values):
    """A float64 array from a list that may hold None (read as NaN)."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def finite(a):
    """The finite entries of the array ``a``."""
    return a[np.isfinite(a)]


def at(values, idx):
    """The entries ``idx`` of ``values`` as floats."""
    a = floats(values)
    return a[idx] if len(idx) else a[:0]


def window(steps, early=False):
    """Indices of the measurement points after step 0; ``early``: only the first 20% of them (at
    least one), docs/protocol.md's "early in training" (at step 0 a network can sit on a flat plateau)."""
    idx = [i for i, s in enumerate(steps) if s > 0]
    return idx[:max(1, math.ceil(0.2 * len(idx)))] if early else idx


def finite_median(values):
    """The median of the finite entries of ``values`` (None and NaN skipped); NaN when there are none."""
    a = finite(floats(values))
    return float(np.median(a)) if a.size else math.nan


def tail_mean(values, fraction=0.1):
    """Mean of the last ``fraction`` of the finite values (the final training loss, less noisy)."""
    v = finite(floats(values))
    return float(v[-max(1, int(len(v) * fraction)):].mean()) if v.size else math.nan


def last(run, key):
    """The last value of ``run[key]`` as a float (NaN when there is none)."""
    a = floats(run.get(key) or [])
    return float(a[-1]) if a.size else math.nan


def final_loss(run):
    return last(run, "loss")


def scaled_layers(n, paper_layers):
    """The paper's layer numbers (of VGG-16's 13 conv layers) on a net of ``n`` conv layers: layer k
    becomes round(k n / 13), distinct, in order."""
    return sorted({min(n, max(1, round(k * n / 13))) for k in paper_layers})


def conv_count(doc):
    """The number of conv layers of a VGG study's net."""
    return len(next(iter(doc["runs"].values()))["moments"]["conv_layers"])


def moment_series(run, conv_layer):
    """The moments record of conv layer ``conv_layer`` (1-based) of a VGG run."""
    layers = sorted(run["moments"]["layers"], key=int)
    return run["moments"]["layers"][layers[conv_layer - 1]]


def rank_residuals(singular_values):
    """``[r_0, ..., r_d]`` from the singular values of a DLN's target Y: r_k, the summed squared error
    of the best rank-k linear fit, is the sum of the squared singular values beyond the k-th (with
    Y = X A^T in the column space of X, the best rank-k fit keeps Y's k largest singular directions:
    reduced-rank regression)."""
    sq = floats(singular_values) ** 2
    return [float(sq[k:].sum()) for k in range(len(sq) + 1)]
