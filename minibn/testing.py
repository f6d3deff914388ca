"""Property-based checks for a layer you wrote: hypothesis draws shapes and values, the float64
gradient checks of :mod:`minibn.gradcheck` judge the backward. A walk-through is
docs/your-own-layer.md.

In a plain test::

    from minibn.testing import check_layer_property

    def test_my_norm():
        check_layer_property(MyNorm)            # MyNorm(channels) builds the layer

:func:`check_layer_property` draws inputs (dense ``(N, C)`` or channels-last ``(N, H, W, C)``,
scaled and shifted, kept off declared kinks), builds a fresh layer with ``make_layer(channels)``,
converts it to float64 and gives its parameters random values, then checks, in each mode:

* the layer contract: backward before any forward is refused; the output has the declared shape
  and x's dtype; dx has x's shape and dtype; every parameter gets a gradient of its shape; x and
  the parameters are left as they were; probe and eval change no state;
* that the forward is a function: twice at the same input, parameters and state (probe and eval
  run in between) it gives the same output, in the checked mode and in eval, so that randomness
  drawn outside the layer's state or a hidden counter cannot pass as kinks;
* the backward against float64 central differences: directional derivatives along random
  directions for dx and every parameter gradient, and the full Jacobian when x is tiny.

A failure raises :class:`~minibn.gradcheck.GradcheckError` naming the mode, the shape, the worst
entry and hypothesis' minimal failing example, written as the :func:`make_input` call that
rebuilds it. With your own ``@given``, draw from :func:`layer_inputs` (or :func:`shapes`) and
call :func:`check_layer_on` on each input.

hypothesis is an optional dependency (``pip install 'minibn[test]'``), imported by this module
only: ``import minibn`` does not need it.
"""

from typing import NamedTuple

try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError as err:
    raise ImportError("minibn.testing needs hypothesis, an optional dependency: pip install 'minibn[test]'") from err

from minibn import backend, gradcheck
from minibn.gradcheck import GradcheckError
from minibn.nn.layer import MODES

__all__ = ["Example", "make_input", "shapes", "examples", "layer_inputs", "check_layer_on", "check_layer_property",
           "GradcheckError"]

np = backend.host

#: Inputs with at most this many values also get the full-Jacobian check (cost: 2 forwards per
#: value and input or parameter entry); larger ones get the directional check only.
FULL_JACOBIAN_MAX = 64


def make_input(shape, *, scale=1.0, offset=0.0, seed=0, kinks=(), margin=0.01):
    """A float64 array of ``shape``: standard normal values times ``scale`` plus ``offset``, any
    value closer than ``margin`` to a point of ``kinks`` moved to that distance (central
    differences are meaningless across a kink, e.g. ReLU's at 0).

    >>> x = make_input((4, 2), scale=0.001, seed=3, kinks=(0.0,))
    >>> x.shape, x.dtype.name, bool((abs(x) >= 0.01).all())
    ((4, 2), 'float64', True)
    """
    kinks = sorted(float(k) for k in kinks)
    if any(b - a < 2 * margin for a, b in zip(kinks, kinks[1:])):
        raise ValueError(f"make_input: kinks {kinks} lie closer than 2 * margin = {2 * margin:g} to each other")
    x = backend.rng(seed).standard_normal(tuple(shape)) * float(scale) + float(offset)
    for kink in kinks:
        gap = x - kink
        x = np.where(abs(gap) < margin, kink + np.where(gap >= 0, margin, -margin), x)
    return x


class Example(NamedTuple):
    """One drawn input, as the arguments of :func:`make_input`; its repr is the call that
    rebuilds it, which is how hypothesis reports a minimal failing example."""

    shape: tuple
    scale: float
    offset: float
    seed: int
    kinks: tuple = ()
    margin: float = 0.01

    def array(self):
        return make_input(self.shape, scale=self.scale, offset=self.offset, seed=self.seed, kinks=self.kinks,
                          margin=self.margin)

    def __repr__(self):
        extra = f", kinks={self.kinks}, margin={self.margin:g}" if self.kinks else ""
        return f"make_input({self.shape}, scale={self.scale!r}, offset={self.offset!r}, seed={self.seed}{extra})"


def _ndims(ndim):
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if not ndims or any(n not in (2, 4) for n in ndims):
        raise ValueError(f"minibn.testing: ndim must be 2 (N, C), 4 (N, H, W, C) or a tuple of them, got {ndim!r}")
    return ndims


def shapes(ndim=2, channels=None, *, max_batch=6, max_size=3, max_channels=4, min_pooled=2):
    """Strategy for input shapes: ``(N, C)`` (ndim 2) or channels-last ``(N, H, W, C)`` (ndim 4;
    a tuple such as ``(2, 4)`` draws both), with ``channels`` fixed or drawn in
    ``1..max_channels`` and at least ``min_pooled`` values per channel (batch statistics need 2)."""
    ndims = _ndims(ndim)
    for name, value in (("channels", channels), ("max_channels", max_channels), ("max_batch", max_batch),
                        ("max_size", max_size), ("min_pooled", min_pooled)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"minibn.testing: {name} must be a positive integer, got {value!r}")

    @st.composite
    def draw_shape(draw):
        c = channels if channels is not None else draw(st.integers(1, max_channels))
        if draw(st.sampled_from(ndims)) == 2:
            return (draw(st.integers(max(1, min_pooled), max(max_batch, min_pooled))), c)
        n, h = draw(st.integers(1, 2)), draw(st.integers(1, max_size))
        w = draw(st.integers(max(1, -(-min_pooled // (n * h))), max(max_size, -(-min_pooled // (n * h)))))
        return (n, h, w, c)

    return draw_shape()


def examples(ndim=2, channels=None, *, kinks=(), margin=0.01, scales=(0.1, 1.0, 10.0), offset=3.0, **shape_options):
    """Strategy for :class:`Example` inputs: a shape from :func:`shapes`, a scale of ``scales``, an
    offset in ``[-offset, offset]`` and a seed for the values."""
    return st.builds(Example, shapes(ndim, channels, **shape_options), st.sampled_from(scales),
                     st.floats(-offset, offset), st.integers(0, 2**32 - 1), st.just(tuple(kinks)), st.just(margin))


def layer_inputs(ndim=2, channels=None, **options):
    """Strategy for float64 input arrays, for your own ``@given`` (options as :func:`examples`)."""
    return examples(ndim, channels, **options).map(Example.array)


def _same(a, b):
    """Bitwise equality of two states (arrays, numbers, and dicts or lists of them)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if hasattr(a, "shape") or hasattr(b, "shape"):
        return np.array_equal(backend.to_host(np.asarray(a) if not hasattr(a, "shape") else a),
                              backend.to_host(np.asarray(b) if not hasattr(b, "shape") else b))
    return a == b


def _build(make_layer, channels, rng):
    layer = make_layer(channels)
    layer.astype("float64")  # also a layer without parameters may hold float constants (BatchNorm(affine=False))
    xp = backend.array_module(*layer.params.values()) if layer.params else np
    for p in layer.params.values():
        # away from the constructor's values (gamma = 1, beta = 0), where a backward that forgets
        # a factor of gamma or a term in beta still looks right
        size = max(float((p * p).mean()) ** 0.5 if p.size else 0.0, 1.0)
        p += backend.to_device(rng.standard_normal(p.shape) * size, xp)
    return layer


def _contract(layer, x, mode, out_shape, rng, where):
    """The layer contract, on a layer that has not run forward yet."""
    try:
        layer.backward(np.zeros(out_shape))
    except Exception:
        pass
    else:
        raise GradcheckError(f"{where}: backward before any forward returned instead of raising (nothing is cached)")
    if mode == "eval":  # running statistics away from their initial values
        layer.forward(x * 2.0 + 1.0, "train")
    state, params, x0 = layer.state(), {k: p.copy() for k, p in layer.params.items()}, x.copy()
    y = layer.forward(x, mode)
    if tuple(y.shape) != tuple(out_shape) or y.dtype != x.dtype:
        raise GradcheckError(f"{where}: forward gave output of shape {tuple(y.shape)} and dtype {y.dtype}, "
                             f"expected shape {tuple(out_shape)} and dtype {x.dtype}")
    dx = layer.backward(backend.to_device(rng.standard_normal(y.shape), backend.array_module(x)))
    if tuple(dx.shape) != tuple(x.shape) or dx.dtype != x.dtype:
        raise GradcheckError(f"{where}: backward gave dx of shape {tuple(dx.shape)} and dtype {dx.dtype}, "
                             f"expected x's shape {tuple(x.shape)} and dtype {x.dtype}")
    missing = [k for k in layer.params if k not in layer.grads]
    if missing:
        raise GradcheckError(f"{where}: backward gave no gradient for parameter(s) {missing} "
                             f"(grads has {sorted(layer.grads)}, params has {sorted(layer.params)})")
    for k, p in layer.params.items():
        g = layer.grads[k]
        if tuple(g.shape) != tuple(p.shape) or g.dtype != p.dtype:
            raise GradcheckError(f"{where}: the gradient of parameter {k!r} has shape {tuple(g.shape)} and dtype "
                                 f"{g.dtype}, the parameter {tuple(p.shape)} and {p.dtype}")
    if not _same(x, x0):
        raise GradcheckError(f"{where}: forward or backward wrote into its input x")
    changed = [k for k in params if not _same(params[k], layer.params[k])]
    if changed:
        raise GradcheckError(f"{where}: forward or backward changed parameter(s) {changed}")
    if mode != "train" and not _same(state, layer.state()):
        raise GradcheckError(f"{where}: mode {mode!r} changed the layer's state {sorted(state)}")
    return float(abs(y).sum())


def _deterministic(layer, x, mode, where):
    """A gradient check is only meaningful on a function: forward in ``mode`` twice at the same input,
    parameters and state (``layer.snapshot()`` puts them back, noise generators included), with the
    other non-training modes run in between (they must change nothing a mode computes), gives the
    same output bit for bit; GradcheckError naming the mode otherwise. Without this check every
    mismatch of a non-function looks like a kink of a function."""
    for checked in dict.fromkeys((mode, "eval")):   # eval too: a probe must change nothing eval computes
        outputs = []
        for between in ((), ("probe", "eval")):
            with layer.snapshot():
                for other in between:
                    layer.forward(x, other)
                outputs.append(backend.to_host(layer.forward(x, checked)).copy())
        if not np.array_equal(*outputs, equal_nan=True):
            gap = float(np.nanmax(abs(outputs[0] - outputs[1])))
            raise GradcheckError(
                f"{where}: forward in mode {checked!r} is not a function of its input, parameters and state: two "
                f"calls at the same input, parameters and state (probe and eval run in between) gave outputs up to "
                f"{gap:.3g} apart (randomness not drawn from a generator in the layer's state(), or state kept "
                f"outside state(), e.g. a call counter or what a probe changes for eval?)")


def check_layer_on(make_layer, x, *, modes=("train", "probe"), output_shape=None, seed=0, rtol=1e-5, atol=1e-8):
    """Check a layer at one float64 input ``x`` in each of ``modes``: a fresh
    ``make_layer(x.shape[-1])`` per mode (float64, parameters drawn with ``seed``), the layer
    contract, then :func:`minibn.gradcheck.check_layer`. ``output_shape(x.shape)`` is the shape
    the output must have (default: x's). Raises GradcheckError on the first failure.

    >>> from minibn import nn
    >>> check_layer_on(nn.BatchNorm, make_input((5, 3), seed=1), modes=("train", "probe", "eval"))
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"minibn.testing: modes must be taken from {MODES}, got {mode!r}")
    if getattr(x, "dtype", None) != "float64":
        raise ValueError(f"minibn.testing: x must be a float64 array, got {getattr(x, 'dtype', type(x).__name__)}")
    out_shape = tuple(output_shape(tuple(x.shape))) if output_shape else tuple(x.shape)
    for mode in modes:
        rng = backend.rng(seed)
        layer = _build(make_layer, x.shape[-1], rng)
        where = f"{layer.describe()} in mode {mode!r} on input shape {tuple(x.shape)}"
        output_size = _contract(layer, x, mode, out_shape, rng, where)
        _deterministic(layer, x, mode, where)
        # The checked scalar sum(r * y) is rounded at ~1e-16 of sum|y| (r ~ N(0, 1)), which the
        # difference step 1e-6 amplifies 1e6 times: a derivative is only known to ~1e-9 sum|y|.
        floor = max(atol, 1e-9 * output_size)
        report = gradcheck.check_layer(layer, x, mode=mode, full=x.size <= FULL_JACOBIAN_MAX, seed=seed, rtol=rtol,
                                       atol=floor, raise_on_fail=False)
        if not report.ok:
            worst = max(report.failures(), key=lambda e: e.rel_err(report.atol))
            raise GradcheckError(f"{where}: worst entry {worst.name}: analytic {worst.analytic:.10g} vs numeric "
                                 f"{worst.numeric:.10g}\n{report}")


def check_layer_property(make_layer, *, ndim=2, channels=None, modes=("train", "probe"), max_examples=50, seed=None,
                         kinks=(), output_shape=None, inputs=None):
    """Check the layer ``make_layer(channels)`` on inputs drawn by hypothesis (see the module's
    docstring): ``ndim`` and ``channels`` as :func:`shapes`, values kept ``0.01`` off ``kinks``, or
    any strategy of arrays or :class:`Example` as ``inputs``. ``seed`` makes the draws
    reproducible; ``max_examples`` bounds the time. Raises GradcheckError naming the mode, the
    shape, the worst entry and the minimal failing example.

    >>> from minibn import nn
    >>> check_layer_property(lambda channels: nn.ReLU(), kinks=(0.0,), max_examples=5, seed=0)
    """
    strategy = inputs if inputs is not None else examples(ndim, channels, kinks=kinks)

    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, report_multiple_bugs=False,
                         suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.filter_too_much])
    @hypothesis.given(strategy)
    def layer_property(case):
        x = case.array() if isinstance(case, Example) else case
        try:
            check_layer_on(make_layer, x, modes=modes, output_shape=output_shape,
                           seed=case.seed if isinstance(case, Example) else 0)
        except GradcheckError as err:
            err.example = case
            raise

    if seed is not None:
        layer_property = hypothesis.seed(seed)(layer_property)
    try:
        layer_property()
    except GradcheckError as err:
        case = getattr(err, "example", None)
        if case is None:
            raise
        rebuild = (f"x = minibn.testing.{case!r}; check_layer_on(make_layer, x, modes={tuple(modes)}, seed={case.seed})"
                   if isinstance(case, Example) else f"x = {case!r}")
        raise GradcheckError(f"check_layer_property: {err}\nhypothesis' minimal failing example: {rebuild}") from None
