"""The one module that knows NumPy from CuPy.

Everything else in minibn takes its array module ``xp`` from here: by name
(:func:`get`), or from the arrays it is handed (:func:`array_module`).  All
randomness starts on the host as a :class:`numpy.random.Generator` (:func:`rng`)
and is moved to the device afterwards, so one seed gives the same numbers on
both backends -- except the per-step noise of the noisy layers, which a GPU draws
itself (:func:`device_random`, seeded from the host generator): copying it there every
step would cost more than the step.

>>> xp = get("numpy")
>>> name_of(array_module(xp.zeros(3)))
'numpy'
"""

import sys

import numpy

BACKENDS = ("numpy", "cupy")
INSTALL_HINT = "install it with: pip install 'minibn[gpu]' (CUDA 12) or 'minibn[gpu13]' (CUDA 13)"

# The host array module, for code that must build host arrays (data loading,
# reports, RNG draws) without importing NumPy itself.
host = numpy


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _cupy_or_none():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def get(backend="numpy"):
    """The array module for ``backend``: a name in :data:`BACKENDS` or a module."""
    if backend is numpy or getattr(backend, "__name__", None) == "cupy":
        return backend
    if backend == "numpy":
        return numpy
    if backend == "cupy":
        cupy = _cupy_or_none()
        if cupy is None:
            raise BackendUnavailable(f"backend 'cupy' was requested but CuPy is not installed; {INSTALL_HINT}")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # CUDA driver or runtime missing
            raise BackendUnavailable(
                f"backend 'cupy' was requested but no usable GPU was found ({err}); "
                f"minibn runs on the CPU with backend 'numpy', or {INSTALL_HINT} on a GPU machine"
            ) from err
        if count < 1:
            raise BackendUnavailable(
                f"backend 'cupy' was requested but CUDA reports no GPU; use backend 'numpy', "
                f"or {INSTALL_HINT} on a GPU machine"
            )
        return cupy
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def is_available(backend):
    """Whether :func:`get` would succeed for ``backend``."""
    try:
        get(backend)
    except BackendUnavailable:
        return False
    return True


def name_of(xp):
    """'numpy' or 'cupy' for an array module."""
    return "cupy" if xp.__name__ == "cupy" else "numpy"


def _loaded_cupy():
    """The ``cupy`` module if it has been imported (a device array cannot exist otherwise)."""
    return sys.modules.get("cupy")


def _is_cupy_array(a):
    cupy = _loaded_cupy()
    return cupy is not None and isinstance(a, getattr(cupy, "ndarray", ()))


def array_module(*arrays):
    """The array module of the given arrays (CuPy if any of them lives on the GPU).

    A device array proves the GPU usable, so this asks the driver nothing: layers call
    it on every forward and backward.
    """
    for a in arrays:
        if _is_cupy_array(a):
            return _loaded_cupy()
    return numpy


def sum_rows(a2):
    """``a2.sum(axis=0)`` of a 2-D array, bit for bit, faster on NumPy.

    NumPy's ``.sum(axis=0)`` of a C-ordered array with two or more columns adds the rows one
    after another, in a loop as short as a row; ``einsum("ij->j")`` adds them in the same
    order with a better loop (measured 8.8 vs 24 us at (1000, 10), 1.4 vs 2.7 ms at
    (131072, 64) float32; the tests hold the two equal). A single column, or rows not
    contiguous, are summed pairwise by ``.sum``, and CuPy has its own reductions: those take
    ``.sum`` itself.
    """
    if array_module(a2) is numpy and a2.ndim == 2 and a2.shape[1] > 1 and a2.flags.c_contiguous:
        return numpy.einsum("ij->j", a2)
    return a2.sum(axis=0)


def to_host(a):
    """A NumPy copy (or view) of ``a``, wherever it lives."""
    if _is_cupy_array(a):
        return a.get()
    return numpy.asarray(a)


def to_device(a, backend):
    """``a`` as an array of ``backend`` (a name or module); no copy where none is needed."""
    xp = get(backend)
    if xp is numpy:
        return to_host(a)
    return xp.asarray(a)


def scalar(value):
    """A 0-d result (a loss, a norm) as a Python float on NumPy; on CuPy it stays a 0-d device
    array, so reading it (``float(value)``, a device-to-host transfer that waits for the GPU)
    is left to the caller that needs the number."""
    if _is_cupy_array(value):
        return value
    return float(value)


def device_random(xp, seed):
    """A generator drawing on ``xp``'s GPU (``xp.random.RandomState``), seeded with the host
    integer ``seed``; reseed it with ``.seed(int)``. CuPy's counter-based Philox is chosen
    where CuPy exposes cuRAND's constants: reseeding it launches no initialization kernel
    (the default XORWOW re-initializes its states at the next draw)."""
    if name_of(xp) != "cupy":
        raise ValueError("device_random: NumPy draws on the host; use backend.rng")
    curand = getattr(xp.cuda, "curand", None)
    method = getattr(curand, "CURAND_RNG_PSEUDO_PHILOX4_32_10", None)
    return xp.random.RandomState(seed) if method is None else xp.random.RandomState(seed, method=method)


def rng(seed=None):
    """A host :class:`numpy.random.Generator` from a seed, or the Generator itself."""
    if isinstance(seed, numpy.random.Generator):
        return seed
    return numpy.random.default_rng(seed)


def synchronize(xp):
    """Wait for queued device work (a no-op on NumPy); for honest timings."""
    if name_of(xp) == "cupy":
        xp.cuda.get_current_stream().synchronize()
