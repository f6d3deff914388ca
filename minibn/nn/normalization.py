"""What every normalizer shares, and the registry of normalizers by name.

Shared by every normalizer: :class:`AffineNorm`, the frame (argument checks, the
parameters ``gamma`` and ``beta``, the running buffers and their update, the input check),
and the pooled view. A normalizer computes its statistics over a 2-D view of its input
whose columns each share one statistic; for the per-channel normalizers (BatchNorm,
LpNorm) that is :func:`channel_rows`, the (m, C) view of a channels-last array, and
:func:`column_sums` reduces it. A normalizer that pools over other axes (LayerNorm,
GroupNorm) sets its own ``pooled_view`` on the frame.

The registry is the one list the rest of minibn derives from: the models' ``norm=``
argument, the studies' accepted variants, and the figures' labels and colours. A layer
module registers its normalizer(s) when it is imported (``minibn.nn`` imports them all),
so adding a normalizer touches its module (with its :func:`register` call), its docs page
and its tests, and nothing else.

>>> from minibn import nn
>>> list(nn.normalization.REGISTRY)
['standard', 'batchnorm', 'noisy', 'standard_noisy', 'l1', 'l2', 'linf']
>>> nn.normalization.get("l2").label
'L2 norm'
"""

import importlib
from typing import Callable, NamedTuple, Optional

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
    return xp.ones(a2.shape[0], dtype=a2.dtype) @ a2


def running_average(running, batch, momentum, bessel_m=None):
    """The running statistic's train-mode update, (1 - momentum) running + momentum batch.

    With ``bessel_m = m`` the batch statistic is a biased variance over m values and is made
    unbiased on the way in (times m / (m - 1)).
    """
    weight = momentum if bessel_m is None else momentum * bessel_m / (bessel_m - 1)
    return (1.0 - momentum) * running + weight * batch


class AffineNorm(Layer):
    """The frame of a normalizer followed by a learned affine map: argument checks, params
    ``"gamma"`` (=1) and ``"beta"`` (=0) per feature (the last axis), the state ``buffers`` (a
    running mean (=0) and a running spread statistic (=1)) and their update, and the input
    check of every mode.

    ``pooled_view`` is how the layer pools (:func:`channel_rows` here); the check that batch
    statistics have at least 2 values to pool reads it.
    """

    buffers = ("running_mean", "running_var")
    pooled_view = staticmethod(channel_rows)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, dtype="float32", xp=None):
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
        self.params["gamma"] = xp.ones(self.num_features, dtype=dtype)
        self.params["beta"] = xp.zeros(self.num_features, dtype=dtype)
        mean, spread = self.buffers
        setattr(self, mean, xp.zeros(self.num_features, dtype=dtype))
        setattr(self, spread, xp.ones(self.num_features, dtype=dtype))

    def describe(self):
        return f"{type(self).__name__}({self.num_features}, eps={self.eps:g}, momentum={self.momentum:g})"

    def _check(self, x, mode):
        check_input(self, "x", x, ndims=(2, 4), last_dim=self.num_features, dtype=self.params["gamma"].dtype)
        if mode != "eval" and self.pooled_view(x).shape[0] < 2:
            raise LayerError(
                f"{self.describe()}: batch statistics need at least 2 values per channel, "
                f"got input of shape {tuple(x.shape)}"
            )

    def _update_running(self, mean, spread, bessel_m=None):
        """Train mode: move the running buffers towards the batch's ``mean`` and ``spread``
        (``bessel_m``: see :func:`running_average`)."""
        running_mean, running_spread = self.buffers
        setattr(self, running_mean, running_average(getattr(self, running_mean), mean, self.momentum))
        setattr(self, running_spread, running_average(getattr(self, running_spread), spread, self.momentum, bessel_m))


class Normalizer(NamedTuple):
    """A registered normalization: ``make(num_features, rng=..., dtype=..., **options)``
    returns the layer to insert after a weight layer (None: insert nothing). ``module`` is
    the module whose import registers it: a study's worker process imports it (:func:`get`)."""

    name: str
    label: str
    color: str
    make: Callable
    module: Optional[str] = None


REGISTRY = {}

#: Old names still accepted by :func:`get` (``models.vgg(norm="noise")``).
ALIASES = {None: "standard", "noise": "standard_noisy"}


def register(name, label, color, make, *, module=None):
    """Add a normalizer under ``name`` (a new name; re-registering one is an error).

    ``module`` (default: the module ``make`` is defined in) is what a study's worker process
    imports to find the normalizer, since a spawned process starts with only minibn's own
    (docs/your-own-layer.md). Register at the top level of that module, so importing it is enough.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: a normalizer's name must be an identifier-like string, got {name!r}")
    if name in REGISTRY or name in ALIASES:
        raise ValueError(f"register: a normalizer named {name!r} is already registered")
    REGISTRY[name] = Normalizer(name, label, color, make, module or getattr(make, "__module__", None))
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


register("standard", "standard", "C0", lambda num_features, **_: None)
