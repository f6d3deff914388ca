"""What every normalizer shares, and the registry of normalizers by name.

Shared by every normalizer: :class:`AffineNorm`, the frame (argument checks, the
parameters ``gamma`` and ``beta``, the running buffers and their update, the input check),
and the pooled view. A normalizer computes its statistics over a 2-D view of its input
whose columns each share one statistic; for the per-channel normalizers (BatchNorm,
LpNorm) that is :func:`channel_rows`, the (m, C) view of a channels-last array, and
:func:`column_sums` reduces it. The per-sample normalizers (GroupNorm, and LayerNorm, its one-group
case) pool each sample's group of channels over all positions: :func:`sample_groups` is the
(N, S, G, C/G) view they compute on, :func:`group_columns` the same pooling as (m, N*G) columns
(their ``pooled_view``). A frame without running buffers (``buffers = ()``) has no state: its
train, eval and probe modes are one map. With running statistics, eval mode is the affine map per
channel of :func:`affine_eval` (BatchNorm and LpNorm differ only in the inverse spread it scales
by), with its backward and tangents beside it.

The registry is the one list the rest of minibn derives from: the models' ``norm=``
argument, the studies' accepted variants, the figures' labels (and colours, where an entry
names one), and the facts the theory and the docs state of each normalizer: which values share
a statistic (``pools``), whether it subtracts a mean (``centres``), which positive scales leave
it unchanged (``invariance``), and the page deriving its backward (``doc``, ``backward``).
tests/nn/test_registry.py checks every entry against its facts, its page, and the tables of
docs/index.md and docs/theory.md. A layer module registers its normalizer(s) when it is imported
(``minibn.nn`` imports them all), so adding a normalizer touches its module (with its
:func:`register` call), one import line in ``minibn/nn/__init__.py``, its docs page, its tests,
and its rows in those two tables.

>>> from minibn import nn
>>> list(nn.normalization.REGISTRY)[:3]
['standard', 'batchnorm', 'batchnorm_noaffine']
>>> {"layernorm", "groupnorm", "weightnorm"} <= set(nn.normalization.REGISTRY)
True
>>> entry = nn.normalization.get("l2")
>>> entry.label, entry.pools, entry.centres, entry.invariance, entry.doc
('L2 norm', 'channel over batch', True, 'per channel', 'layers/lpnorm.md')
"""

import functools
import importlib
import warnings
from typing import Any, Callable, NamedTuple, Optional

from minibn import backend
from minibn.nn.layer import Layer, LayerError, check_input


def channel_rows(x):
    """x as (m, C), column j holding channel j's m values: channels-last makes every axis but
    the last a batch axis (m = N, or N*H*W for conv activations). A view when x is contiguous."""
    return x.reshape(-1, x.shape[-1])


def column_sums(a2):
    """sum_i a2[i, :] of an (m, C) array, as the product 1^T a2.

    A GEMV is several times faster than ``a2.sum(axis=0)``, whose reduction runs
    across the contiguous axis (measured 4 us vs 31 us at (1000, 10), 2.9 ms vs 4.9 ms
    at (131072, 64)).
    """
    xp = backend.array_module(a2)
    ones = _host_ones(a2.shape[0], a2.dtype) if xp is backend.host else xp.ones(a2.shape[0], dtype=a2.dtype)
    return ones @ a2


@functools.lru_cache(maxsize=32)
def _host_ones(m, dtype):
    """A read-only host vector of m ones, made once per length and dtype: made anew, it was a third
    of column_sums' 4.3 us at the DLN's (1000, 10), four times per BatchNorm layer and step."""
    ones = backend.host.ones(m, dtype=dtype)
    ones.flags.writeable = False
    return ones


def sample_groups(x, num_groups):
    """x as (N, S, G, C/G): sample n's group g is ``[n, :, g, :]``, its S = H*W positions (1 for (N, C))
    times its C/G channels. A view when x is contiguous; the caller checks that G divides C."""
    return x.reshape(x.shape[0], -1, num_groups, x.shape[-1] // num_groups)


def group_columns(x, num_groups):
    """The per-sample normalizers' pooled view: (m, N*G), column n*G + g holding the m = S*C/G values
    of sample n's group g (a copy; the layers themselves compute on :func:`sample_groups`)."""
    groups = sample_groups(x, num_groups)
    return groups.transpose(1, 3, 0, 2).reshape(-1, groups.shape[0] * num_groups)


def running_average(running, batch, momentum, bessel_m=None):
    """The running statistic's train-mode update, (1 - momentum) running + momentum batch.

    With ``bessel_m = m`` the batch statistic is a biased variance over m values and is made
    unbiased on the way in (times m / (m - 1)).
    """
    weight = momentum if bessel_m is None else momentum * bessel_m / (bessel_m - 1)
    return (1.0 - momentum) * running + weight * batch


class EvalCache(NamedTuple):
    """What eval mode's backward needs: (m, C) ``x_hat``, per-channel ``gamma`` and ``inv_scale``."""

    x_hat: Any
    gamma: Any
    inv_scale: Any


def affine_eval(x, gamma, beta, running_mean, inv_scale):
    """``(y, EvalCache)``: eval mode of a normalizer with running statistics, the affine map per channel
    x_hat = (x - running_mean) * inv_scale, y = gamma * x_hat + beta, with its running spread's
    inverse ``inv_scale`` (BatchNorm's 1/sqrt(running_var + eps), LpNorm's 1/(running_norm + eps))."""
    x_hat = (channel_rows(x) - running_mean) * inv_scale
    y = x_hat * gamma + beta
    return y.reshape(x.shape), EvalCache(x_hat, gamma, inv_scale)


def affine_eval_backward(dy, cache):
    """``(dx, {"gamma", "beta"})`` of :func:`affine_eval`: no batch coupling, dx = dy * gamma * inv_scale."""
    dy2 = channel_rows(dy)
    dbeta = column_sums(dy2)
    dgamma = column_sums(dy2 * cache.x_hat)
    dx = dy2 * (cache.gamma * cache.inv_scale)
    return dx.reshape(dy.shape), {"gamma": dgamma, "beta": dbeta}


class EvalTangentCache(NamedTuple):
    """What the tangent of the eval-mode backward needs: (m, C) ``x_hat_t``, per-channel ``gamma_t``."""

    x_hat_t: Any
    gamma_t: Any


def affine_eval_tangent_forward(x_t, gamma_t, beta_t, cache):
    """``(y_t, EvalTangentCache)`` of :func:`affine_eval` at the point of ``cache`` (inv_scale is a constant):
    x_hat_t = x_t * inv_scale, y_t = gamma_t * x_hat + gamma * x_hat_t + beta_t."""
    x_hat_t = channel_rows(x_t) * cache.inv_scale
    y_t = gamma_t * cache.x_hat + cache.gamma * x_hat_t + beta_t
    return y_t.reshape(x_t.shape), EvalTangentCache(x_hat_t, gamma_t)


def affine_eval_tangent_backward(dy, dy_t, cache, tangent_cache):
    """``(dx_t, {"gamma", "beta"})``, the tangent of :func:`affine_eval_backward`: dbeta_t = sum_i dy_t_i,
    dgamma_t = sum_i (dy_t_i * x_hat_i + dy_i * x_hat_t_i), dx_t = (dy_t * gamma + dy * gamma_t) * inv_scale."""
    x_hat_t, gamma_t = tangent_cache
    dy2, dy_t2 = channel_rows(dy), channel_rows(dy_t)
    dbeta_t = column_sums(dy_t2)
    dgamma_t = column_sums(dy_t2 * cache.x_hat + dy2 * x_hat_t)
    dx_t = (dy_t2 * cache.gamma + dy2 * gamma_t) * cache.inv_scale
    return dx_t.reshape(dy.shape), {"gamma": dgamma_t, "beta": dbeta_t}


class ModeCache(NamedTuple):
    """The layer's cache of a normalizer whose eval mode is a map of its own (the running
    statistics'): the ``mode`` its forward ran in, which picks the backward and tangent passes
    of that mode, and the functional core's ``cache``."""

    mode: str
    cache: Any


class AffineNorm(Layer):
    """The frame of a normalizer followed by a learned affine map: argument checks, params
    ``"gamma"`` (=1) and ``"beta"`` (=0) per feature (the last axis), the state ``buffers`` (a
    running mean (=0) and a running spread statistic (=1)) and their update, and the input
    check of every mode.

    ``pooled_view`` is how the layer pools (:func:`channel_rows` here); the check that batch
    statistics have at least 2 values to pool reads it. With ``affine=False`` there are no
    parameters: the layer computes with gamma = 1, beta = 0 (the theory's constant case). A
    subclass with ``buffers = ()`` keeps no running statistics (its statistics are the input's in
    every mode); its constructor takes no ``momentum``.
    """

    buffers = ("running_mean", "running_var")
    pooled_view = staticmethod(channel_rows)
    #: The field of the layer's cache holding the inverse of each statistic's spread (1/sigma, 1/rms,
    #: 1/norm), which :meth:`forward` checks on the host.
    inverse_spread = "inv_std"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, affine=True, dtype="float32", xp=None):
        super().__init__()
        name = type(self).__name__
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive integer, got {num_features!r}")
        if not eps >= 0 or eps == float("inf"):  # "not >=" also refuses NaN
            raise ValueError(f"{name}: eps must be a finite number >= 0, got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must lie in [0, 1], got {momentum!r}")
        xp = backend.get(xp or "numpy")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.affine = bool(affine)
        # without gamma and beta the dtype still has a home: the layer's (float) constants
        self._constants = (xp.ones(1, dtype=dtype), xp.zeros(1, dtype=dtype))
        if self.affine:
            self.params["gamma"] = xp.ones(self.num_features, dtype=dtype)
            self.params["beta"] = xp.zeros(self.num_features, dtype=dtype)
        for buffer, initial in zip(self.buffers, (0.0, 1.0)):
            setattr(self, buffer, xp.full(self.num_features, initial, dtype=dtype))

    def forward(self, x, mode="train"):
        """The layer's forward (:meth:`Layer.forward`), and on the host a warning, once per layer, when a
        statistic's spread is not finite: the squares of float32 values beyond about 1.8e19 overflow,
        and the output is then beta, its gradient 0, silently. On a GPU the check is left out (it
        would make the step wait for the device at every layer)."""
        y = super().forward(x, mode)
        if not getattr(self, "_warned_spread", False) and backend.array_module(x) is backend.host:
            inverse = self._inverse_spread(self._cache)
            if inverse is not None and not backend.host.minimum.reduce(inverse, axis=None) > 0:   # NaN fails too
                warnings.warn(f"{self.describe()}: the spread of its {x.dtype} input's statistics is not finite in "
                              f"mode {mode!r} (inputs of magnitude up to {float(abs(x).max()):.3g}: their squares "
                              f"overflow, or the input holds inf or NaN); those statistics normalize to 0, the output "
                              f"is beta and the gradient 0; compute in float64 (model.astype('float64')) or rescale "
                              f"the input", RuntimeWarning, stacklevel=2)
                self._warned_spread = True
        return y

    def _inverse_spread(self, cache):
        """The :attr:`inverse_spread` field of the layer's cache (a :class:`ModeCache`'s or the core's),
        or in eval mode the :class:`EvalCache`'s ``inv_scale``."""
        core = getattr(cache, "cache", cache)
        return getattr(core, self.inverse_spread, getattr(core, "inv_scale", None))

    def describe(self):
        momentum = f", momentum={self.momentum:g}" if self.buffers else ""
        affine = "" if self.affine else ", affine=False"
        return f"{type(self).__name__}({self.num_features}, eps={self.eps:g}{momentum}{affine})"

    def gamma_beta(self, params):
        """``(gamma, beta)``: those of ``params``, or the constants 1 and 0 (shape (1,)) without affine."""
        return (params["gamma"], params["beta"]) if self.affine else self._constants

    def to(self, backend_name):
        self._constants = tuple(backend.to_device(c, backend_name) for c in self._constants)
        return super().to(backend_name)

    def astype(self, dtype):
        self._constants = tuple(c.astype(dtype) for c in self._constants)
        return super().astype(dtype)

    def _values_per_statistic(self, x):
        return self.pooled_view(x).shape[0]

    def _check(self, x, mode):
        check_input(self, "x", x, ndims=(2, 4), last_dim=self.num_features, dtype=self._constants[0].dtype)
        if (mode != "eval" or not self.buffers) and self._values_per_statistic(x) < 2:
            pooled = "batch statistics need at least 2 values per channel" if self.buffers else \
                "per-sample statistics need at least 2 values per sample and group"
            raise LayerError(f"{self.describe()}: {pooled}, got input of shape {tuple(x.shape)}")

    def _update_running(self, mean, spread, bessel_m=None):
        """Train mode: move the running buffers towards the batch's ``mean`` and ``spread``
        (``bessel_m``: see :func:`running_average`)."""
        running_mean, running_spread = self.buffers
        setattr(self, running_mean, running_average(getattr(self, running_mean), mean, self.momentum))
        setattr(self, running_spread, running_average(getattr(self, running_spread), spread, self.momentum, bessel_m))


#: The values that share one statistic, as a registry entry's ``pools`` says.
POOLS = {
    "channel over batch": "one channel over the batch (and its positions)",
    "sample": "one sample, all its values",
    "sample and group": "one sample's group of channels, over its positions",
    "unit's weights": "one output unit's weights (a reparametrization of the weights)",
}

#: The positive scales that leave a normalizer's output unchanged at eps = 0 (and scale its input
#: gradient by 1/a), as a registry entry's ``invariance`` says: a scale a_j of each channel of its
#: input, a_n of each sample, a_ng of each sample's group of channels, or a_j of each output unit's
#: weights v_j (a reparametrization, invariant in its parameter ``v``, not in its input).
INVARIANCES = ("per channel", "per sample", "per sample and group", "per unit")


class Normalizer(NamedTuple):
    """A registered normalization.

    ``make(num_features, *, rng, dtype, **options)`` returns the layer to insert after a weight
    layer (None: insert nothing); options a make honours where they apply and ignores otherwise:
    ``eps`` (the theory's checks build every normalizer with eps = 0), the noise constants, the
    models' ``num_groups``. ``module`` is the module whose import registers it: a study's worker
    process imports it (:func:`get`). ``reparametrize(weight_layer)``, when given, returns the
    layer that replaces each weight layer a normalization would follow (WeightNorm: the weights
    reparametrized, nothing inserted). ``color``: its colour in the figures (None: the figures
    choose a free one).

    The facts: ``pools`` (a key of :data:`POOLS`, None for a layer without statistics),
    ``centres`` (whether it subtracts a mean), ``invariance`` (one of :data:`INVARIANCES`, None
    for none), ``doc`` (its page, relative to docs/) and ``backward`` (the functional backward
    that page derives: the page quotes its final line, the code's last assignment).
    """

    name: str
    label: str
    make: Callable
    color: Optional[str] = None
    module: Optional[str] = None
    reparametrize: Optional[Callable] = None
    doc: Optional[str] = None
    backward: Optional[Callable] = None
    pools: Optional[str] = None
    centres: bool = False
    invariance: Optional[str] = None


REGISTRY = {}

#: Old names still accepted by :func:`get` (``models.vgg(norm="noise")``).
ALIASES = {None: "standard", "noise": "standard_noisy"}


def register(name, label, make, *, color=None, module=None, reparametrize=None, doc=None, backward=None,
             pools=None, centres=False, invariance=None):
    """Add a normalizer under ``name`` (a new name; re-registering one is an error), with its
    facts (:class:`Normalizer`).

    ``module`` (default: the module ``make`` is defined in) is what a study's worker process
    imports to find the normalizer, since a spawned process starts with only minibn's own
    (docs/your-own-layer.md). Register at the top level of that module, so importing it is enough.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: a normalizer's name must be an identifier-like string, got {name!r}")
    if name in REGISTRY or name in ALIASES:
        raise ValueError(f"register: a normalizer named {name!r} is already registered")
    if not callable(make):
        raise ValueError(f"register: {name!r}: make must be callable, got {make!r}")
    if pools is not None and pools not in POOLS:
        raise ValueError(f"register: {name!r}: pools must be one of {tuple(POOLS)} or None, got {pools!r}")
    if invariance is not None and invariance not in INVARIANCES:
        raise ValueError(f"register: {name!r}: invariance must be one of {INVARIANCES} or None, got {invariance!r}")
    if not isinstance(centres, bool):
        raise ValueError(f"register: {name!r}: centres must be True or False, got {centres!r}")
    REGISTRY[name] = Normalizer(name, label, make, color, module or getattr(make, "__module__", None), reparametrize,
                                doc, backward, pools, centres, invariance)
    return REGISTRY[name]


def get(name, module=None):
    """The :class:`Normalizer` registered as ``name`` (or one of its :data:`ALIASES`); when it is
    not registered in this process, ``module`` (its entry's ``module`` in the process that chose
    it) is imported first, which registers it."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY and module:
        importlib.import_module(module)
    if key not in REGISTRY:
        where = f" (importing {module!r} did not register it)" if module else ""
        raise ValueError(f"unknown normalizer {name!r}{where}; choose one of {tuple(REGISTRY)} "
                         f"(or None for the standard network)")
    return REGISTRY[key]


register("standard", "standard", lambda num_features, **_: None, color="C0")
