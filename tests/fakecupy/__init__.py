"""A strict CuPy stand-in for tests on machines without a GPU.

``install()`` puts the modules ``cupy``, ``cupy.linalg``, ``cupy.random``,
``cupy.lib.stride_tricks``, ``cupy.cuda`` and ``cupyx.scipy.sparse.linalg`` into
``sys.modules``, so that ``minibn.backend.get("cupy")`` returns the stand-in.  Its arrays
wrap NumPy arrays and follow CuPy's rules (see ``_array``): no implicit conversion to
NumPy, no host arrays in device operations, 0-d device arrays from reductions.  It counts
device-to-host transfers, host-to-device copies and device operations per call site::

    with fakecupy.counting() as counts:
        model.forward(x)
    counts.to_host      # Counter {"minibn/nn/losses.py:38": 1, ...}
    counts.ops          # kernel launches per site

``version`` selects the ``eigsh`` signature: CuPy 13's (``v0``) or CuPy 12's (none).
Numbers agree with NumPy's bit for bit (the same NumPy code runs underneath); random
streams do not match a GPU's.  Run a command line on it with
``python -m tests.fakecupy -m minibn.studies.dln --backend cupy ...``.
"""

import contextlib
import sys

from . import _eigsh, _namespace
from ._array import IMPLICIT_CONVERSION, ndarray
from ._counts import KINDS, TOTALS, Counts, counting

__all__ = ["install", "uninstall", "installed", "counting", "Counts", "KINDS", "TOTALS", "ndarray", "cupy",
           "DEVICE", "IMPLICIT_CONVERSION", "is_installed"]

cupy = _namespace.TREE["cupy"]
DEVICE = _namespace.DEVICE


def _set_version(version):
    major = int(str(version).split(".")[0])
    if major < 12:
        raise ValueError(f"fakecupy: versions 12 and 13+ are modelled, got {version!r}")
    cupy.__version__ = str(version)
    linalg = _namespace.TREE["cupyx.scipy.sparse.linalg"]
    linalg.eigsh = _eigsh.eigsh_v12 if major == 12 else _eigsh.eigsh_v13


def install(version=_namespace.VERSION):
    """Put the stand-in into ``sys.modules`` (replacing any ``cupy`` there); returns the ``cupy`` module."""
    _set_version(version)
    sys.modules.update(_namespace.TREE)
    return cupy


def uninstall():
    for name, module in _namespace.TREE.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
    _set_version(_namespace.VERSION)


def is_installed():
    return sys.modules.get("cupy") is cupy


@contextlib.contextmanager
def installed(version=_namespace.VERSION):
    """The stand-in in ``sys.modules`` for the ``with`` block; whatever was there before comes back."""
    saved = {name: sys.modules.get(name) for name in _namespace.TREE}
    saved_version = cupy.__version__
    try:
        yield install(version)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        _set_version(saved_version)
