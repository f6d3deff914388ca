"""Algorithm 1 of the paper: noise that shifts and scales every unit's distribution.

For an input ``x`` with channels on the last axis, at every training step and for each
unit (channel) j, draw

    mu_j    ~ U(-n_mu, n_mu)               sigma_j ~ U(1, n_sigma)

and then for every element (i, j), i running over the batch (and H, W for conv inputs),

    shift_ij ~ U(mu_j - r_mu, mu_j + r_mu)            (the paper's m_ij)
    scale_ij ~ N(sigma_j, r_sigma^2)                  (the paper's s_ij; r_sigma a std)

Forward and backward (the same draws, cached), :func:`forward` and :func:`backward`:

    y  = scale * x + shift
    dx = scale * dy

Second order, with the cached draws (the noise is fixed at the point; none in probe mode):

    y_t = scale * x_t,    dx_t = scale * dy_t

:class:`NoiseInjection` is the noise alone ("noise added to the standard network");
:class:`NoisyBatchNorm` is :class:`~minibn.nn.BatchNorm` followed by the noise, applied to
BN's affine output a = gamma * x_hat + beta (the noise's input), so its backward is
BatchNorm's backward of da = scale * dy.

Noise is added in ``"train"`` mode only. ``"eval"`` and ``"probe"`` add none and draw
nothing (the paper is silent; minibn's choice: measuring must neither perturb the loss
nor advance the generator). On NumPy the draws come from the layer's host
``numpy.random.Generator`` (:func:`minibn.backend.rng`) in the order mu, sigma (float64),
shift, scale (standard uniform and normal variates in the input's dtype, see
:func:`draw`). On CuPy they are drawn on the device (:func:`draw_on_device`): copying
two values per element from the host every step would cost more than the step, so each
step the host generator draws one 63-bit seed for the layer's device generator
(:func:`minibn.backend.device_random`). Either way the host generator's state
(``bit_generator.state``) is part of ``layer.state()`` and all a checkpoint needs to
resume with the very same draws on the same backend. One seed gives the same noise on
one backend, not across backends (the device streams are cuRAND's).
"""

import copy
import math
from typing import Any, NamedTuple

from minibn import backend
from minibn.nn.batchnorm import BatchNorm
from minibn.nn.layer import Layer, LayerError, check_input
from minibn.nn.normalization import register


class Cache(NamedTuple):
    """The step's ``scale`` draws (1.0 where no noise was added)."""

    scale: Any


class NoisyCache(NamedTuple):
    """NoisyBatchNorm's: BatchNorm's cache ``bn`` and the noise's cache ``noise``."""

    bn: Any
    noise: Cache


def draw(rng, shape, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1, dtype="float64"):
    """Host ``(scale, shift)`` of ``shape`` and ``dtype`` (float32 or float64) for one step.

    The per-element draws are standard variates in ``dtype``, moved into place:
    U(mu - r_mu, mu + r_mu) = (mu - r_mu) + 2 r_mu U(0, 1) and N(sigma, r_sigma^2) =
    sigma + r_sigma N(0, 1); float32 draws are about 3x cheaper than broadcast float64 ones.
    """
    channels = shape[-1]
    mu = rng.uniform(-n_mu, n_mu, size=channels).astype(dtype)
    sigma = rng.uniform(1.0, n_sigma, size=channels).astype(dtype)
    shift = rng.random(shape, dtype=dtype)
    shift *= 2.0 * r_mu
    shift += mu - r_mu
    scale = rng.standard_normal(shape, dtype=dtype)
    scale *= r_sigma
    scale += sigma
    return scale, shift


def draw_on_device(device_rng, shape, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1, dtype="float64"):
    """:func:`draw`'s ``(scale, shift)`` from a device generator (``xp.random.RandomState``),
    the same distributions and the same arithmetic, drawn where they are used."""
    channels = shape[-1]
    mu = device_rng.uniform(-n_mu, n_mu, size=channels, dtype=dtype)
    sigma = device_rng.uniform(1.0, n_sigma, size=channels, dtype=dtype)
    shift = device_rng.random_sample(shape, dtype=dtype)
    shift *= 2.0 * r_mu
    shift += mu - r_mu
    scale = device_rng.standard_normal(shape, dtype=dtype)
    scale *= r_sigma
    scale += sigma
    return scale, shift


def forward(x, scale, shift):
    """``(y, Cache)`` with y = scale * x + shift."""
    return x * scale + shift, Cache(scale)


def backward(dy, cache):
    """``(dx, {})`` with dx = scale * dy (no parameters)."""
    dx = dy * cache.scale
    return dx, {}


NO_NOISE = Cache(1.0)


class _NoiseSource:
    """The generator, the noise constants and their part of the state (a mixin)."""

    def _init_noise(self, n_mu, n_sigma, r_mu, r_sigma, rng):
        name = type(self).__name__
        for arg, v, low in (("n_mu", n_mu, 0.0), ("n_sigma", n_sigma, 1.0), ("r_mu", r_mu, 0.0), ("r_sigma", r_sigma, 0.0)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
                raise ValueError(f"{name}: {arg} must be a finite number >= {low:g}, got {v!r}")
        self.noise = {"n_mu": float(n_mu), "n_sigma": float(n_sigma), "r_mu": float(r_mu), "r_sigma": float(r_sigma)}
        self.rng = backend.rng(rng)
        self._device_rng = None  # made at the first draw on a GPU, reseeded every step

    def _describe_noise(self):
        return ", ".join(f"{k}={v:g}" for k, v in self.noise.items())

    def _draw_like(self, x):
        """One step's (scale, shift) in x's dtype, on x's device."""
        xp = backend.array_module(x)
        draw_dtype = "float32" if x.dtype == "float32" else "float64"
        if xp is backend.host:
            scale, shift = draw(self.rng, x.shape, **self.noise, dtype=draw_dtype)
        else:
            seed = int(self.rng.integers(2**63))
            if self._device_rng is None:
                self._device_rng = backend.device_random(xp, seed)
            else:
                self._device_rng.seed(seed)
            scale, shift = draw_on_device(self._device_rng, x.shape, **self.noise, dtype=draw_dtype)
        return scale.astype(x.dtype, copy=False), shift.astype(x.dtype, copy=False)

    def clone(self):
        # The device generator is a cuRAND handle (no deep copy); the clone makes its own.
        device_rng, self._device_rng = self._device_rng, None
        try:
            return super().clone()
        finally:
            self._device_rng = device_rng

    def state(self):
        return {**super().state(), "rng": copy.deepcopy(self.rng.bit_generator.state)}

    def load_state(self, state):
        if "rng" not in state:
            raise LayerError(f"{self.describe()}: state is missing 'rng' (the noise generator's bit_generator.state)")
        rest = {k: v for k, v in state.items() if k != "rng"}
        super().load_state(rest)
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])


class NoiseInjection(_NoiseSource, Layer):
    """``NoiseInjection(num_features, *, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1, rng=None, dtype="float32")``.

    No parameters; state: the generator (``rng``). Inputs (N, C) or (N, H, W, C) of ``dtype``.
    """

    def __init__(self, num_features, *, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1, rng=None, dtype="float32"):
        super().__init__()
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"NoiseInjection: num_features must be a positive integer, got {num_features!r}")
        self.num_features = int(num_features)
        self._init_noise(n_mu, n_sigma, r_mu, r_sigma, rng)
        self._dtype = backend.host.dtype(dtype)

    @property
    def dtype(self):
        return self._dtype

    def astype(self, dtype):
        super().astype(dtype)
        self._dtype = backend.host.dtype(dtype)
        return self

    def describe(self):
        return f"NoiseInjection({self.num_features}, {self._describe_noise()})"

    def _apply(self, params, x, mode):
        check_input(self, "x", x, ndims=(2, 4), last_dim=self.num_features, dtype=self._dtype, dtype_of="the layer's values")
        if mode != "train":
            return x, NO_NOISE
        return forward(x, *self._draw_like(x))

    def _backward(self, dy, cache):
        return backward(dy, cache)

    def _tangent_forward(self, x_t, params_t, cache):
        return x_t * cache.scale, None

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        return backward(dy_t, cache)


class NoisyBatchNorm(_NoiseSource, BatchNorm):
    """``NoisyBatchNorm(num_features, eps=1e-5, momentum=0.1, *, n_mu=0.5, n_sigma=1.25, r_mu=0.1,
    r_sigma=0.1, rng=None, dtype="float32")``: BatchNorm, then the noise (train mode only).

    Params ``"gamma"``, ``"beta"``; state ``running_mean``, ``running_var`` (which see the
    batch before the noise) and the generator (``rng``).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1,
                 rng=None, dtype="float32", xp=None):
        super().__init__(num_features, eps, momentum, dtype=dtype, xp=xp)
        self._init_noise(n_mu, n_sigma, r_mu, r_sigma, rng)

    def describe(self):
        return f"NoisyBatchNorm({self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}, {self._describe_noise()})"

    def _apply(self, params, x, mode):
        a, bn_cache = super()._apply(params, x, mode)
        if mode != "train":
            return a, NoisyCache(bn_cache, NO_NOISE)
        y, noise_cache = forward(a, *self._draw_like(a))
        return y, NoisyCache(bn_cache, noise_cache)

    def _backward(self, dy, cache):
        da, _ = backward(dy, cache.noise)
        return super()._backward(da, cache.bn)

    def _inverse_spread(self, cache):
        return super()._inverse_spread(cache.bn)

    def _tangent_forward(self, x_t, params_t, cache):
        a_t, bn_tangent = super()._tangent_forward(x_t, params_t, cache.bn)
        return a_t * cache.noise.scale, bn_tangent

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        da, _ = backward(dy, cache.noise)
        da_t, _ = backward(dy_t, cache.noise)
        return super()._tangent_backward(da, da_t, cache.bn, tangent_cache)


NOISE_OPTIONS = ("n_mu", "n_sigma", "r_mu", "r_sigma")


def _noise_options(options):
    """The noise constants among a model's options (a make ignores the options it has no use for)."""
    return {k: v for k, v in options.items() if k in NOISE_OPTIONS}


# the noise is applied to BatchNorm's output, so noisy BatchNorm keeps BatchNorm's facts (with the noise's draws fixed)
register("noisy", "noisy BatchNorm",
         lambda num_features, *, rng, dtype, eps=1e-5, **options: NoisyBatchNorm(
             num_features, eps, rng=rng.integers(2**63), dtype=dtype, **_noise_options(options)),
         color="C2", doc="layers/noisy.md", backward=backward, pools="channel over batch", centres=True,
         invariance="per channel")
register("standard_noisy", "standard + noise",
         lambda num_features, *, rng, dtype, **options: NoiseInjection(
             num_features, rng=rng.integers(2**63), dtype=dtype, **_noise_options(options)),
         color="C3", doc="layers/noisy.md", backward=backward)
