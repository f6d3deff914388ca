"""Who moved data between host and device, and who launched device work.

Three kinds of event are counted: ``to_host`` (a device-to-host transfer: ``float()``,
``.get()``, printing, ...), ``to_device`` (a host-to-device copy: ``cupy.asarray`` of a
host array, ...) and ``ops`` (a device operation: one elementwise, reduction, matmul,
fill or copy kernel).  Each event is charged to the first frame on the stack that is
neither the stand-in nor ``minibn/backend.py`` (a pass-through: a transfer made through
``backend.to_host`` belongs to whoever called it), written ``path:line`` relative to the
repository root.
"""

import collections
import contextlib
import os
import sys

KINDS = ("to_host", "to_device", "ops")

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_PASS_THROUGH = (os.path.join(_ROOT, "minibn", "backend.py"),)


class Counts:
    """Per-site counters of one recording: ``counts.to_host["minibn/train.py:120"]``."""

    def __init__(self):
        for kind in KINDS:
            setattr(self, kind, collections.Counter())

    def total(self, kind):
        return sum(getattr(self, kind).values())

    def reset(self):
        for kind in KINDS:
            getattr(self, kind).clear()

    def __repr__(self):
        return "Counts(" + ", ".join(f"{kind}={dict(getattr(self, kind))}" for kind in KINDS) + ")"


# Totals since install, and the recordings in progress (nested recordings all count).
TOTALS = collections.Counter()
_recordings = []


def _site():
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_HERE) or path in _PASS_THROUGH):
            rel = os.path.relpath(path, _ROOT) if path.startswith(_ROOT) else path
            return f"{rel}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def record(kind, n=1):
    TOTALS[kind] += n
    if _recordings:
        site = _site()
        for counts in _recordings:
            getattr(counts, kind)[site] += n


@contextlib.contextmanager
def counting():
    """Record the events of the ``with`` block per call site; yields a :class:`Counts`."""
    counts = Counts()
    _recordings.append(counts)
    try:
        yield counts
    finally:
        _recordings.remove(counts)
