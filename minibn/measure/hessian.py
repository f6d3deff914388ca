"""The Hessian of the train-mode loss, through products H v (beyond the paper).

H is the Hessian of the loss being trained -- batch statistics, as in training -- taken
in "probe" mode so that no running statistic or noise generator moves (PyHessian and
loss-landscape switch BatchNorm to eval mode, a different function). w is the flat
parameter vector (``model.flat_params()``), g = grad L(w) from minibn's own backward.

Hessian-vector product, exact by default (``product="auto"``): Pearlmutter's R-operator,
:meth:`minibn.nn.Sequential.hvp`, the directional derivative of minibn's own gradient along v
computed by every layer's tangent passes (one forward, one tangent forward, one backward and
its tangent). ReLU masks, pooling argmaxes and Lp signs stay as the forward at w found them,
so H is the Hessian of the smooth piece w sits in (what autograd tools report). With
``product="exact"`` a layer or a loss lacking them is refused with a NotImplementedError/TypeError
naming it; ``product="auto"`` (the default) and ``product="fd"`` then measure it by central differences of the gradient along
v_hat = v/||v||:

    H v ~= ||v|| (grad L(w + h v_hat) - grad L(w - h v_hat)) / (2 h),   h = eps * max(1, ||w||_2)

which is wrong wherever a kink lies within h of w along v (a ReLU sign or an argmax switching
adds a gradient jump divided by 2h), and is kept as a cross-check on smooth networks.

Its error is O(h^2) (third derivatives) plus O(u / h) (rounding of the gradients, u the
unit roundoff, 1.1e-16 in float64). The default eps = 1e-6 sits between the two: on the
25-layer DLN (standard and BN, 1000 samples) the product changes by about 1e-9 relative
from eps = 1e-6 to 1e-7, by 1e-7 from 1e-5 to 1e-6, and grows noisy again below 1e-7. Everything
runs in float64: a model of another dtype is measured on a float64 copy (the original
is not touched), so a float32 VGG's Hessian is that of the same network in float64.

On top of it:

* ``top_eigenvalue``: the eigenvalue of largest magnitude (signed), by power iteration
  (Rayleigh quotient of the iterate) or by Lanczos (``eigsh`` on a ``LinearOperator``:
  SciPy on host vectors, ``cupyx.scipy`` on the GPU); the start vector is seeded.
* ``hutchinson_trace``: tr H ~= mean_s z_s^T H z_s with seeded Rademacher z_s.
* ``gradient_curvature``: g^T H g / ||g||^2, the curvature along the gradient, which
  the landscape probe's beta_eff approximates by finite steps.
* ``block=i`` restricts each of them to block i's parameters (``model.block_slices()``):
  the diagonal block H_ii of the Hessian.
* ``mode="eval"`` takes the Hessian of the eval-mode loss instead (running statistics, the
  function PyHessian measures); the default ``"probe"`` is the train-mode loss.
* ``x`` and ``target`` may be lists of equal length (chunks of a fixed measurement set):
  L is then the mean of the chunk losses, each chunk's batch statistics its own, and every
  product costs one pass per chunk.

Cost: an exact product is about 2 forward/backward passes (the passes and their tangents),
as is a differenced one; plus 1 for g and L(w) at setup.
"""

import math

from minibn import backend
from minibn.measure import Recorder, json_float
from minibn.nn.losses import loss_tangent

DEFAULT_EPS = 1e-6
METHODS = ("lanczos", "power")
MODES = ("probe", "eval")
PRODUCTS = ("auto", "exact", "fd")


def exact_available(model, loss_fn):
    """Whether every layer of ``model`` and ``loss_fn`` have the tangent passes of the exact product."""
    try:
        loss_tangent(loss_fn)
    except TypeError:
        return False
    return model.has_tangents


class HessianOperator:
    """H at the model's current parameters as ``matvec(v)``; a context manager that
    writes the parameters back (bit-exactly) on exit.

    ``block`` restricts vectors to one block's slice of the flat vector (``size`` is then
    that block's parameter count). ``product``: "auto" (exact when available), "exact" (R-operator) or "fd" (central
    differences with step ``eps``; module docstring). ``grad`` is g (restricted likewise), ``loss`` is L(w),
    ``hvps`` counts the products taken.
    """

    def __init__(self, model, loss_fn, x, target, *, block=None, eps=DEFAULT_EPS, product="auto", mode="probe"):
        if mode not in MODES:
            raise ValueError(f"HessianOperator: mode must be one of {MODES}, got {mode!r}")
        if not eps > 0:
            raise ValueError(f"HessianOperator: eps must be positive, got {eps!r}")
        if product not in PRODUCTS:
            raise ValueError(f"HessianOperator: product must be one of {PRODUCTS}, got {product!r}")
        if product == "auto":
            product = "exact" if exact_available(model, loss_fn) else "fd"
        # the tangent of the loss gradient, for the exact product (a loss without one is refused before any work)
        self.loss_tangent = loss_tangent(loss_fn) if product == "exact" else None
        self.product, self.mode = product, mode
        chunks = list(zip(x, target)) if isinstance(x, (list, tuple)) else [(x, target)]
        if not chunks or (isinstance(x, (list, tuple)) and len(x) != len(target)):
            raise ValueError(f"HessianOperator: x and target must be arrays or lists of equal length, got "
                             f"{len(x) if isinstance(x, (list, tuple)) else 'an array'} and "
                             f"{len(target) if isinstance(target, (list, tuple)) else 'an array'}")
        if model.dtype != "float64":
            model = model.clone().astype("float64")
            chunks = [(cx.astype("float64"), ct.astype("float64") if ct.dtype.kind == "f" else ct)
                      for cx, ct in chunks]
        self.model, self.loss_fn, self.chunks = model, loss_fn, chunks
        self.xp = model.xp
        self._snapshot = model.snapshot()
        self.w = model.flat_params()
        self.h = eps * max(1.0, float(self.xp.linalg.norm(self.w)))
        self.slice = slice(None)
        if block is not None:
            slices = model.block_slices()
            if not -len(slices) <= block < len(slices):
                raise ValueError(f"HessianOperator: block {block} out of range; the model has {len(slices)} blocks")
            self.slice = slices[block]
        self.size = len(range(*self.slice.indices(self.w.size)))
        self.loss, full_grad = self._loss_and_grad(self.w)
        self.grad = full_grad[self.slice]
        self.hvps = 0

    def _loss_and_grad(self, w):
        self.model.set_flat_params(w)
        loss, grad = 0.0, 0.0
        for x, target in self.chunks:
            loss += float(self.model.value_and_grad(self.loss_fn, x, target, mode=self.mode))
            grad = grad + self.model.flat_grads()
        return loss / len(self.chunks), grad / len(self.chunks)

    def matvec(self, v):
        """H v for a vector v of ``size`` float64 entries on the model's backend."""
        v = self.xp.asarray(v, dtype="float64").reshape(-1)
        if v.size != self.size:
            raise ValueError(f"HessianOperator.matvec: v has {v.size} entries, expected {self.size}")
        norm = float(self.xp.linalg.norm(v))
        if norm == 0.0:
            return self.xp.zeros_like(v)
        direction = self.xp.zeros_like(self.w)
        if self.product == "exact":
            direction[self.slice] = v
            self.model.set_flat_params(self.w)
            self.hvps += 1
            total = sum(self.model.hvp(self.loss_fn, x, target, direction, mode=self.mode, loss_tangent=self.loss_tangent)
                        for x, target in self.chunks)
            return (total / len(self.chunks))[self.slice]
        direction[self.slice] = v / norm
        g_plus = self._loss_and_grad(self.w + self.h * direction)[1]
        g_minus = self._loss_and_grad(self.w - self.h * direction)[1]
        self.hvps += 1
        return (g_plus - g_minus)[self.slice] * (norm / (2.0 * self.h))

    def random_vector(self, rng, kind="normal"):
        """A seeded host draw of ``size`` float64 entries, moved to the model's backend."""
        rng = backend.rng(rng)
        if kind == "rademacher":
            draw = rng.integers(0, 2, size=self.size).astype("float64") * 2.0 - 1.0
        else:
            draw = rng.standard_normal(self.size)
        return backend.to_device(draw, self.xp)

    def close(self):
        self._snapshot.restore()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def hvp(model, loss_fn, x, target, v, *, eps=DEFAULT_EPS, product="auto", mode="probe"):
    """H v for the flat vector v (float64, the model's backend); see the module docstring."""
    with HessianOperator(model, loss_fn, x, target, eps=eps, product=product, mode=mode) as op:
        return op.matvec(v)


def _power_iteration(op, iterations, tol, seed):
    v = op.random_vector(seed)
    v = v / op.xp.linalg.norm(v)
    value = None
    for _ in range(iterations):
        hv = op.matvec(v)
        new = float(op.xp.vdot(v, hv))  # Rayleigh quotient of the unit iterate
        norm = float(op.xp.linalg.norm(hv))
        if norm == 0.0 or not math.isfinite(norm):
            return new, norm == 0.0
        v = hv / norm
        if value is not None and abs(new - value) <= tol * abs(new):
            return new, True
        value = new
    return value, False


# Krylov basis size on CuPy: SciPy's default for k = 1 (min(n, 20)), within CuPy's bound n - 1.
LANCZOS_BASIS = 20


def _lanczos(op, iterations, tol, seed, which):
    v0 = op.random_vector(seed)
    xp = op.xp
    if op.size < 4:  # eigsh needs room for a Krylov space; build the tiny matrix instead
        dense = xp.stack([op.matvec(col) for col in xp.eye(op.size)], axis=1)
        values = xp.linalg.eigvalsh((dense + dense.T) / 2.0)
        pick = values[-1] if which == "LA" else values[int(xp.argmax(abs(values)))]
        return float(pick), True
    options = {"k": 1, "which": which, "tol": tol, "return_eigenvectors": True}
    if backend.name_of(xp) == "cupy":
        import inspect

        from cupyx.scipy.sparse.linalg import LinearOperator, eigsh
        matvec = op.matvec
        ncv = min(LANCZOS_BASIS, op.size - 1)
        options.update(ncv=ncv, maxiter=iterations * ncv)  # CuPy counts Lanczos steps, SciPy restarts
        if "v0" in inspect.signature(eigsh).parameters:
            options["v0"] = v0
        else:  # CuPy 12: the start vector comes from CuPy's global generator, seeded here instead
            xp.random.seed(seed)
    else:
        from scipy.sparse.linalg import LinearOperator, eigsh
        options.update(v0=backend.to_host(v0), maxiter=iterations)

        def matvec(v):  # ARPACK works on host vectors
            return backend.to_host(op.matvec(v))
    operator = LinearOperator((op.size, op.size), matvec=matvec, dtype="float64")
    try:
        values, vectors = eigsh(operator, **options)
    except Exception as err:
        if type(err).__name__ != "ArpackNoConvergence":
            raise
        if not len(err.eigenvalues):
            return float("nan"), False
        values, vectors = err.eigenvalues, err.eigenvectors
    value = float(values[0])
    return value, _converged(op, value, backend.to_device(vectors[:, 0], xp), tol)


def _converged(op, value, vector, tol):
    """Whether the Ritz pair (value, vector) has a relative residual ||H v - value v|| <= tol |value|
    (v of unit norm): judged by minibn on both backends, as CuPy's eigsh never reports
    non-convergence and its own stopping test is absolute. Costs one more product."""
    if not math.isfinite(value):
        return False
    vector = vector / op.xp.linalg.norm(vector)
    residual = float(op.xp.linalg.norm(op.matvec(vector) - value * vector))
    return residual <= tol * abs(value)


def top_eigenvalue(model, loss_fn, x, target, *, method="lanczos", block=None, which="LM",
                   iterations=100, tol=1e-6, seed=0, eps=DEFAULT_EPS, product="auto", mode="probe"):
    """The top eigenvalue of H (or of block ``block``'s H_ii).

    ``which="LM"``: largest magnitude, signed (what power iteration finds); Lanczos also
    takes ``"LA"`` (largest algebraic). ``iterations`` bounds power steps (one product each)
    or Lanczos restarts of a basis of at most 20 vectors (SciPy's ``maxiter``; CuPy's, which
    counts Lanczos steps, gets ``iterations * 20``): at most about 20 ``iterations`` products
    on either backend. ``converged``: power iteration's relative change of the estimate is
    within ``tol``; Lanczos's relative residual ||H v - lambda v|| / |lambda| of the returned
    pair is within ``tol`` (one more product). Returns ``{"eigenvalue", "method", "which", "block", "converged",
    "hvps"}`` (``eigenvalue`` is ``None`` if non-finite).
    """
    if method not in METHODS:
        raise ValueError(f"top_eigenvalue: method must be one of {METHODS}, got {method!r}")
    if which not in ("LM", "LA") or (method == "power" and which != "LM"):
        raise ValueError(f"top_eigenvalue: which must be 'LM' (or 'LA' with Lanczos), got {which!r} with {method!r}")
    with HessianOperator(model, loss_fn, x, target, block=block, eps=eps, product=product, mode=mode) as op:
        if method == "power":
            value, converged = _power_iteration(op, iterations, tol, seed)
        else:
            value, converged = _lanczos(op, iterations, tol, seed, which)
        return {"eigenvalue": None if value is None else json_float(value), "method": method, "which": which,
                "block": block, "converged": bool(converged), "hvps": op.hvps}


def hutchinson_trace(model, loss_fn, x, target, *, samples=100, block=None, seed=0, eps=DEFAULT_EPS,
                     product="auto", mode="probe"):
    """tr H ~= mean over ``samples`` seeded Rademacher z of z^T H z.

    Returns ``{"trace", "stderr", "samples", "block", "hvps"}`` (stderr of the mean;
    ``None`` for one sample).
    """
    if int(samples) != samples or samples < 1:
        raise ValueError(f"hutchinson_trace: samples must be a positive integer, got {samples!r}")
    rng = backend.rng(seed)
    with HessianOperator(model, loss_fn, x, target, block=block, eps=eps, product=product, mode=mode) as op:
        estimates = []
        for _ in range(int(samples)):
            z = op.random_vector(rng, "rademacher")
            estimates.append(float(op.xp.vdot(z, op.matvec(z))))
        hvps = op.hvps
    mean = math.fsum(estimates) / len(estimates)
    stderr = None
    if len(estimates) > 1:
        spread = math.fsum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1)
        stderr = json_float(math.sqrt(spread / len(estimates)))
    return {"trace": json_float(mean), "stderr": stderr, "samples": len(estimates), "block": block, "hvps": hvps}


def gradient_curvature(model, loss_fn, x, target, *, block=None, eps=DEFAULT_EPS, product="auto", mode="probe"):
    """g^T H g / ||g||^2 (``None`` when g = 0 or a value is non-finite)."""
    with HessianOperator(model, loss_fn, x, target, block=block, eps=eps, product=product, mode=mode) as op:
        g = op.grad
        g_sq = float(op.xp.vdot(g, g))
        if not g_sq > 0.0:
            return None
        return json_float(float(op.xp.vdot(g, op.matvec(g))) / g_sq)


class HessianRecorder(Recorder):
    """Callback: top eigenvalue (Lanczos) and curvature along the gradient every ``every`` steps;
    optionally the Hutchinson trace (``trace_samples`` > 0) and per-block top eigenvalues.

    ``which`` ("LM" or "LA", :func:`top_eigenvalue`) and ``mode`` ("probe": the train-mode loss,
    or "eval") are passed on; ``data``, when given, is a fixed ``(x, target)`` (arrays, or lists of
    chunks) measured at every step instead of the step's batch; ``curvature=False`` skips g^T H g.
    ``result()``: ``{"steps", "top_eigenvalue"[, "curvature"][, "trace"][, "block_top_eigenvalue"]}``.
    """

    def __init__(self, loss_fn, every=100, *, method="lanczos", trace_samples=0, per_block=False,
                 iterations=100, tol=1e-4, seed=0, eps=DEFAULT_EPS, product="auto", name="hessian", which="LM",
                 mode="probe", data=None, curvature=True):
        self.trace_samples, self.per_block, self.curvature = int(trace_samples), per_block, curvature
        super().__init__(name, every, {k: [] for k in self.keys()})
        self.loss_fn, self.data = loss_fn, data
        self.options = {"method": method, "iterations": iterations, "tol": tol, "seed": seed, "eps": eps,
                        "product": product, "which": which, "mode": mode}
        self.product = {"eps": eps, "product": product, "mode": mode}

    def keys(self):
        return ("steps", "top_eigenvalue") + (("curvature",) if self.curvature else ()) \
            + (("trace",) if self.trace_samples else ()) + (("block_top_eigenvalue",) if self.per_block else ())

    def __call__(self, step, model, x, target, optimizer):
        if self.data is not None:
            x, target = self.data
        args = (model, self.loss_fn, x, target)
        rec = self.records
        rec["steps"].append(int(step))
        rec["top_eigenvalue"].append(top_eigenvalue(*args, **self.options)["eigenvalue"])
        if self.curvature:
            rec["curvature"].append(gradient_curvature(*args, **self.product))
        if self.trace_samples:
            rec["trace"].append(hutchinson_trace(*args, samples=self.trace_samples, seed=self.options["seed"],
                                                 **self.product)["trace"])
        if self.per_block:
            rec["block_top_eigenvalue"].append([top_eigenvalue(*args, block=b, **self.options)["eigenvalue"]
                                                for b in range(len(model.blocks()))])
