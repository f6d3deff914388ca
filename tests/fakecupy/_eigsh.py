"""``cupyx.scipy.sparse.linalg``: ``LinearOperator`` and ``eigsh`` with CuPy's documented semantics.

What differs from SciPy's ARPACK and matters to callers (docs.cupy.dev,
``cupyx.scipy.sparse.linalg.eigsh``): ``v0`` exists from CuPy 13 on (CuPy 12 has no such
keyword); ``maxiter`` bounds the number of Lanczos steps (operator products), not
restarts, and defaults to ``10 * n``; ``tol`` bounds the residual ``|beta * s_last|`` of
each Ritz pair, absolute, machine epsilon when 0; the solver never raises on
non-convergence: it returns what it has when ``maxiter`` runs out.  Results are sorted
ascending.  The algorithm here is a plain thick-restart Lanczos with full
reorthogonalization, run on the payloads of the device arrays; the operator is only ever
applied to device vectors.
"""

import numpy

from ._array import ndarray, operand, wrap
from ._counts import record


class LinearOperator:
    def __init__(self, shape, matvec, rmatvec=None, matmat=None, dtype=None, rmatmat=None):
        if len(shape) != 2:
            raise ValueError(f"invalid shape {shape!r} (must be 2-d)")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = numpy.dtype(dtype if dtype is not None else "float64")
        self.ndim = 2
        self._matvec = matvec

    def matvec(self, x):
        m, n = self.shape
        if x.shape not in ((n,), (n, 1)):
            raise ValueError("dimension mismatch")
        y = self._matvec(x)
        if type(y) is not ndarray:
            raise TypeError(f"LinearOperator.matvec must return a cupy.ndarray, got {type(y)}")
        return y.reshape(m) if x.ndim == 1 else y.reshape(m, 1)

    def __matmul__(self, x):
        return self.matvec(x)

    dot = __matmul__


def _apply(a, v):
    """A v for a device vector v, as a host payload (the product itself runs on the device)."""
    x = ndarray._of(v)
    y = a.matvec(x) if isinstance(a, LinearOperator) else a @ x
    return numpy.array(operand(y), dtype=v.dtype).reshape(-1)


def _pick(theta, k, which):
    order = numpy.argsort(numpy.abs(theta) if which == "LM" else theta)
    return order[:k] if which == "SA" else order[-k:]


def _eigsh(a, k, which, v0, ncv, maxiter, tol, return_eigenvectors):
    n = a.shape[0]
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected square matrix (shape: {a.shape})")
    if a.dtype.char not in "fdFD":
        raise TypeError(f"unsupported dtype (actual: {a.dtype})")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n) (actual: k={k}, n={n})")
    if which not in ("LM", "LA", "SA"):
        raise ValueError(f"which must be 'LM', 'LA' or 'SA' (actual: {which})")
    ncv = min(max(2 * k, k + 32), n - 1) if ncv is None else min(max(ncv, k + 2), n - 1)
    maxiter = 10 * n if maxiter is None else maxiter
    tol = numpy.finfo(a.dtype).eps if tol == 0 else tol

    if v0 is None:
        start = numpy.random.default_rng().random(n)
    else:
        start = numpy.array(operand(v0), dtype=a.dtype).reshape(-1)  # a host v0 is refused
    basis = numpy.zeros((ncv, n), dtype=a.dtype)
    projected = numpy.zeros((ncv, ncv), dtype=a.dtype)
    basis[0] = start / numpy.linalg.norm(start)
    j, steps = 0, 0
    while True:
        w = _apply(a, basis[j])
        steps += 1
        record("ops", 5)  # dot products, two reorthogonalization passes, norm, scaling
        h = basis[:j + 1] @ w
        w -= basis[:j + 1].T @ h
        again = basis[:j + 1] @ w
        w -= basis[:j + 1].T @ again
        h += again
        projected[:j + 1, j] = projected[j, :j + 1] = h
        b = numpy.linalg.norm(w)
        invariant = b <= numpy.finfo(a.dtype).eps * max(1.0, numpy.abs(h).max())
        if j + 1 < ncv and not invariant:
            basis[j + 1] = w / b
            j += 1
            continue
        m = j + 1
        record("to_host")  # the projected matrix is solved on the host, as CuPy does
        theta, s = numpy.linalg.eigh(projected[:m, :m])
        idx = _pick(theta, k, which)
        residual = numpy.abs(b * s[-1, idx])
        if invariant or residual.max() <= tol or steps >= maxiter:
            break
        ritz = s[:, idx].T @ basis[:m]
        projected[:] = 0
        projected[numpy.arange(k), numpy.arange(k)] = theta[idx]
        basis[:k] = ritz
        basis[k] = w / b
        j = k
    values = theta[idx]
    order = numpy.argsort(values)
    record("ops")
    if return_eigenvectors:
        vectors = (s[:, idx].T @ basis[:m]).T
        return wrap(values[order]), wrap(vectors[:, order])
    return wrap(values[order])


def eigsh_v13(a, k=6, *, which="LM", v0=None, ncv=None, maxiter=None, tol=0, return_eigenvectors=True):
    """CuPy 13's signature (``v0`` accepted)."""
    return _eigsh(a, k, which, v0, ncv, maxiter, tol, return_eigenvectors)


def eigsh_v12(a, k=6, *, which="LM", ncv=None, maxiter=None, tol=0, return_eigenvectors=True):
    """CuPy 12's signature: no ``v0`` (passing one is a ``TypeError``)."""
    return _eigsh(a, k, which, None, ncv, maxiter, tol, return_eigenvectors)
