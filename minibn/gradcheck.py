"""Float64 gradient checks for hand-written backward passes, usable on your own layers.

Two checks, both by central differences:

* **directional** (cheap for big layers): for a random direction u,
  (f(x + eps u) - f(x - eps u)) / (2 eps) must equal <grad f(x), u>;
* **full Jacobian** (tiny shapes): every entry dy_k/dx_l by central differences
  against the rows that ``backward`` returns for the unit cotangents e_k.

A layer is checked through the scalar L(x, params) = sum(r * layer(x)) with a fixed
random cotangent r, so ``backward(r)`` is dL/dx and ``layer.grads`` is dL/dparams.
Before each forward the layer's state (running statistics, noise generator) is
restored, so stateful layers see identical draws, and it is restored once more at
the end: checking never changes the layer.

Kinks (ReLU at 0, max-pool ties, |y| at 0) make central differences meaningless. With
``detect_kinks`` the one-sided differences are compared too; an entry whose left and
right slopes disagree is reported as a kink and not counted as a failure.

>>> from minibn import nn, backend
>>> layer = nn.Dense(3, 2, rng=0, dtype="float64")
>>> x = backend.rng(1).normal(size=(4, 3))
>>> check_layer(layer, x).ok
True
"""

from dataclasses import dataclass, field

from minibn import backend


class GradcheckError(AssertionError):
    """A gradient check failed; the message is the report, worst entry first."""


@dataclass
class Entry:
    name: str            # "x", a parameter key, or "x[3] -> y[1]" for Jacobian entries
    analytic: float
    numeric: float
    kink: bool = False

    @property
    def abs_err(self):
        return abs(self.analytic - self.numeric)

    def rel_err(self, atol):
        return self.abs_err / (abs(self.numeric) + abs(self.analytic) + atol)


@dataclass
class Report:
    what: str
    rtol: float
    atol: float
    entries: list = field(default_factory=list)

    def failures(self):
        return [e for e in self.entries if not e.kink and e.abs_err > self.atol + self.rtol * abs(e.numeric)]

    @property
    def ok(self):
        return not self.failures()

    @property
    def worst(self):
        real = [e for e in self.entries if not e.kink] or self.entries
        return max(real, key=lambda e: e.rel_err(self.atol)) if real else None

    @property
    def kinks(self):
        return [e for e in self.entries if e.kink]

    def __str__(self):
        lines = [f"gradcheck of {self.what}: {'ok' if self.ok else 'FAILED'} "
                 f"({len(self.entries)} comparisons, rtol={self.rtol:g}, atol={self.atol:g}, {len(self.kinks)} at kinks)"]
        bad = sorted(self.failures(), key=lambda e: -e.rel_err(self.atol))
        w = self.worst
        for e in (bad[:5] if bad else [w] if w else []):
            lines.append(f"  {'worst' if not bad else 'fail '} {e.name}: analytic {e.analytic:.10g} vs numeric "
                         f"{e.numeric:.10g} (abs err {e.abs_err:.3g}, rel err {e.rel_err(self.atol):.3g})")
        return "\n".join(lines)


def _require_float64(what, name, a):
    if a.dtype != "float64":
        raise ValueError(f"gradcheck of {what}: {name} must be float64 (got {a.dtype}); "
                         f"float32 cannot resolve central differences")


def _slopes(f, x, u, eps):
    """Central, right and left difference quotients of f along u at x (x restored)."""
    x0 = x.copy()
    x += eps * u
    f_plus = f()
    x[...] = x0
    x -= eps * u
    f_minus = f()
    x[...] = x0
    f_0 = f()
    return (f_plus - f_minus) / (2 * eps), (f_plus - f_0) / eps, (f_0 - f_minus) / eps


def _is_kink(central, right, left, eps):
    # One-sided slopes differ by O(eps * curvature) at smooth points, by O(1) at a kink.
    return abs(right - left) > 1e-3 * (abs(central) + 1.0) + 1e3 * eps


def check_function(f, inputs, grads, n_directions=3, eps=1e-6, rtol=1e-5, atol=1e-8, seed=0,
                   detect_kinks=True, what="function", raise_on_fail=False):
    """Directional check of a scalar function f() of the arrays in ``inputs``.

    ``f`` takes no arguments and reads the arrays of ``inputs`` (a dict name ->
    float64 array), which this check perturbs in place and restores; ``grads`` maps
    the same names to the claimed gradients.
    """
    rng = backend.rng(seed)
    report = Report(what, rtol, atol)
    for name, x in inputs.items():
        _require_float64(what, name, x)
        if name not in grads:
            raise ValueError(f"gradcheck of {what}: no analytic gradient given for {name!r}")
        if grads[name].shape != x.shape:
            raise ValueError(f"gradcheck of {what}: gradient for {name!r} has shape {tuple(grads[name].shape)}, "
                             f"the input has shape {tuple(x.shape)}")
        xp = backend.array_module(x)
        for d in range(n_directions):
            u = backend.to_device(rng.standard_normal(x.shape), xp)
            u /= float(xp.sqrt((u * u).sum())) or 1.0
            central, right, left = _slopes(f, x, u, eps)
            analytic = float((grads[name] * u).sum())
            kink = detect_kinks and _is_kink(central, right, left, eps)
            report.entries.append(Entry(f"{name} (direction {d})", analytic, central, kink))
    if raise_on_fail and not report.ok:
        raise GradcheckError(str(report))
    return report


def numerical_jacobian(f, x, eps=1e-6):
    """The Jacobian of the array-valued f() with respect to the array x, shape (f.size, x.size)."""
    xp = backend.array_module(x)
    if not x.flags.c_contiguous:
        raise ValueError(f"numerical_jacobian: x must be C-contiguous (perturbed through a flat view), shape {tuple(x.shape)}")
    flat = x.reshape(-1)
    cols = []
    for j in range(flat.size):
        old = float(flat[j])
        flat[j] = old + eps
        plus = f().ravel().copy()
        flat[j] = old - eps
        minus = f().ravel().copy()
        flat[j] = old
        cols.append((plus - minus) / (2 * eps))
    return xp.stack(cols, axis=1)


def check_layer(layer, x, mode="probe", n_directions=3, full=None, eps=1e-6, rtol=1e-5, atol=1e-8,
                seed=0, detect_kinks=True, raise_on_fail=True):
    """Check ``layer.backward`` against central differences of ``layer.forward`` at x.

    ``full`` (default: when input and output have at most 300 entries each) also
    compares the complete Jacobian of the output with respect to x and every parameter.
    Returns a :class:`Report`; raises :class:`GradcheckError` on failure if asked.
    """
    what = layer.describe()
    _require_float64(what, "x", x)
    for k, p in layer.params.items():
        _require_float64(what, f"parameter {k!r}", p)
    x = x.copy()
    saved_state = layer.state()
    xp = backend.array_module(x)
    rng = backend.rng(seed)

    def run():
        layer.load_state(saved_state)
        return layer.forward(x, mode)

    y = run()
    r = backend.to_device(rng.standard_normal(y.shape), xp)
    dx = layer.backward(r)
    grads = {"x": dx, **{k: g.copy() for k, g in layer.grads.items()}}
    inputs = {"x": x, **layer.params}
    try:
        report = check_function(lambda: float((run() * r).sum()), inputs, grads, n_directions, eps, rtol, atol,
                                rng, detect_kinks, what)
        if full is None:
            full = x.size <= 300 and y.size <= 300
        if full:
            _check_jacobian(layer, run, inputs, y.shape, xp, eps, report, detect_kinks)
    finally:
        layer.load_state(saved_state)
    if raise_on_fail and not report.ok:
        raise GradcheckError(str(report))
    return report


def _check_jacobian(layer, run, inputs, out_shape, xp, eps, report, detect_kinks):
    y0 = run()
    size = y0.size
    rows = {name: [] for name in inputs}
    for k in range(size):
        e = xp.zeros(size, dtype=y0.dtype)
        e[k] = 1.0
        dx = layer.backward(e.reshape(out_shape))
        rows["x"].append(dx.ravel().copy())
        for key in layer.params:
            rows[key].append(layer.grads[key].ravel().copy())
    for name, a in inputs.items():
        analytic = xp.stack(rows[name], axis=0)
        numeric = numerical_jacobian(run, a, eps)
        if detect_kinks:
            kinky = _jacobian_kinks(run, a, eps)
        for k in range(size):
            for j in range(a.size):
                kink = detect_kinks and bool(kinky[j])
                report.entries.append(Entry(f"d y[{k}] / d {name}[{j}]", float(analytic[k, j]), float(numeric[k, j]), kink))
    run()  # leave the cache of an unperturbed forward behind


def _jacobian_kinks(run, a, eps):
    """For each entry of a: whether some output has different left and right slopes."""
    flat = a.reshape(-1)
    y0 = run().ravel().copy()
    out = []
    for j in range(flat.size):
        old = float(flat[j])
        flat[j] = old + eps
        right = (run().ravel() - y0) / eps
        flat[j] = old - eps
        left = (y0 - run().ravel()) / eps
        flat[j] = old
        gap = abs(right - left).max() if right.size else 0.0
        out.append(float(gap) > 1e-3 * (float(abs(right).max()) + 1.0) + 1e3 * eps)
    return out
