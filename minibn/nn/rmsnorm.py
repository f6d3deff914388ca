"""RMS normalization: each sample divided by the root mean square of its values, without
subtracting their mean (Zhang and Sennrich, 2019).

For a sample n, its m values x_i: the C features of an (N, C) input, or all H*W*C values of a
channels-last (N, H, W, C) one (LayerNorm's pooling), as row n of the (N, m) view
:func:`sample_rows`:

Forward (every mode: the statistic is the sample's own), :func:`forward`:

    ms      = (1/m) sum_i x_i^2
    inv_rms = 1 / sqrt(ms + eps)
    x_hat   = x * inv_rms
    y       = gamma * x_hat + beta                (gamma, beta per feature: the last axis)

Backward, with dy = dL/dy (derived in docs/layers/rmsnorm.md), :func:`backward`:

    dbeta  = sum over samples (and positions) of dy
    dgamma = sum over samples (and positions) of dy * x_hat
    dx_hat = dy * gamma
    dx     = (inv_rms / m) * (m * dx_hat - x_hat * sum_i dx_hat_i x_hat_i)

with the sum over i running over the sample: LayerNorm's dx without its mean term. With gamma = 1
and eps = 0 this is dx = inv_rms P dy, P = I - x_hat x_hat^T/m per sample, the projection removing
x_hat alone (rank m - 1): a shift of a sample's values passes through. No running statistics:
train, eval and probe are one map, and samples never mix.

Second order (the exact Hessian-vector product, :meth:`minibn.nn.Sequential.hvp`): tangents x_t,
gamma_t, beta_t, dy_t of x, gamma, beta, dy, with mean(.) and sum(.) over the sample,
:func:`tangent_forward` and :func:`tangent_backward`:

    inv_rms_t = -inv_rms^2 * mean(x_hat * x_t)
    x_hat_t   = inv_rms * (x_t - x_hat * mean(x_hat * x_t))
    y_t       = gamma_t * x_hat + gamma * x_hat_t + beta_t
    dx_hat_t  = dy_t * gamma + dy * gamma_t
    dx_t      = (inv_rms_t / m) * (m * dx_hat - x_hat * sum(dx_hat * x_hat))
              + (inv_rms / m) * (m * dx_hat_t - x_hat_t * sum(dx_hat * x_hat)
                                 - x_hat * sum(dx_hat_t * x_hat + dx_hat * x_hat_t))
    dgamma_t  = sum over samples and positions of dy_t * x_hat + dy * x_hat_t,   dbeta_t = that of dy_t
"""

from typing import Any, NamedTuple

from minibn.nn.normalization import AffineNorm, group_columns, register


def sample_rows(x):
    """x as (N, m), row n holding all m values of sample n (positions and channels). A view when x is
    contiguous."""
    return x.reshape(x.shape[0], -1)


class Cache(NamedTuple):
    """What the backward needs: (N, m) ``x_hat``, per-feature ``gamma``, (N, 1) ``inv_rms``; and the
    samples' mean squares ``ms`` (N, 1), for inspection."""

    x_hat: Any
    gamma: Any
    inv_rms: Any
    ms: Any


def forward(x, gamma, beta, eps=1e-5):
    """``(y, Cache)``: divide each sample by its root mean square, line by line as in the module docstring."""
    x2 = sample_rows(x)
    m = x2.shape[1]
    ms = (x2 * x2).sum(axis=1, keepdims=True) * (1.0 / m)
    inv_rms = 1.0 / (ms + eps) ** 0.5
    x_hat = x2 * inv_rms
    y = gamma * x_hat.reshape(x.shape) + beta
    return y, Cache(x_hat, gamma, inv_rms, ms)


def backward(dy, cache):
    """``(dx, {"gamma", "beta"})`` by the closed form of the module docstring."""
    x_hat, gamma, inv_rms = cache.x_hat, cache.gamma, cache.inv_rms
    m, channels = x_hat.shape[1], dy.shape[-1]
    dbeta = dy.reshape(-1, channels).sum(axis=0)
    dgamma = (dy * x_hat.reshape(dy.shape)).reshape(-1, channels).sum(axis=0)
    dx_hat = sample_rows(dy * gamma)
    dx = (inv_rms / m) * (m * dx_hat - x_hat * (dx_hat * x_hat).sum(axis=1, keepdims=True))
    return dx.reshape(dy.shape), {"gamma": dgamma, "beta": dbeta}


class TangentCache(NamedTuple):
    """What the tangent of the backward needs: (N, m) ``x_hat_t``, per-feature ``gamma_t``, (N, 1) ``inv_rms_t``."""

    x_hat_t: Any
    gamma_t: Any
    inv_rms_t: Any


def tangent_forward(x_t, gamma_t, beta_t, cache):
    """``(y_t, TangentCache)`` at the point of ``cache`` (module docstring)."""
    x_hat, gamma, inv_rms = cache.x_hat, cache.gamma, cache.inv_rms
    x_t2 = sample_rows(x_t)
    m = x_hat.shape[1]
    projected = (x_hat * x_t2).sum(axis=1, keepdims=True) * (1.0 / m)
    inv_rms_t = -inv_rms * inv_rms * projected
    x_hat_t = inv_rms * (x_t2 - x_hat * projected)
    y_t = gamma_t * x_hat.reshape(x_t.shape) + gamma * x_hat_t.reshape(x_t.shape) + beta_t
    return y_t, TangentCache(x_hat_t, gamma_t, inv_rms_t)


def tangent_backward(dy, dy_t, cache, tangent_cache):
    """``(dx_t, {"gamma", "beta"})``, the tangent of :func:`backward` (module docstring)."""
    x_hat, gamma, inv_rms = cache.x_hat, cache.gamma, cache.inv_rms
    x_hat_t, gamma_t, inv_rms_t = tangent_cache
    m, channels = x_hat.shape[1], dy.shape[-1]
    dx_hat = sample_rows(dy * gamma)
    dx_hat_t = sample_rows(dy_t * gamma + dy * gamma_t)
    along_x_hat = (dx_hat * x_hat).sum(axis=1, keepdims=True)
    along_x_hat_t = (dx_hat_t * x_hat + dx_hat * x_hat_t).sum(axis=1, keepdims=True)
    dx_t = (inv_rms_t / m) * (m * dx_hat - x_hat * along_x_hat) \
        + (inv_rms / m) * (m * dx_hat_t - x_hat_t * along_x_hat - x_hat * along_x_hat_t)
    dgamma_t = (dy_t * x_hat.reshape(dy.shape) + dy * x_hat_t.reshape(dy.shape)).reshape(-1, channels).sum(axis=0)
    return dx_t.reshape(dy.shape), {"gamma": dgamma_t, "beta": dy_t.reshape(-1, channels).sum(axis=0)}


class RMSNorm(AffineNorm):
    """``RMSNorm(normalized_features, eps=1e-5)``: params ``"gamma"`` (=1), ``"beta"`` (=0) per
    feature (the last axis, which must have ``normalized_features`` entries); no state."""

    inverse_spread = "inv_rms"

    buffers = ()

    def __init__(self, normalized_features, eps=1e-5, *, dtype="float32", xp=None):
        super().__init__(normalized_features, eps, dtype=dtype, xp=xp)

    def describe(self):
        return f"RMSNorm({self.num_features}, eps={self.eps:g})"

    def pooled_view(self, x):
        return group_columns(x, 1)

    def _values_per_statistic(self, x):
        return x.size // max(x.shape[0], 1)

    def _apply(self, params, x, mode):
        self._check(x, mode)
        return forward(x, params["gamma"], params["beta"], self.eps)

    def _backward(self, dy, cache):
        return backward(dy, cache)

    def _tangent_forward(self, x_t, params_t, cache):
        return tangent_forward(x_t, params_t["gamma"], params_t["beta"], cache)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        return tangent_backward(dy, dy_t, cache, tangent_cache)


register("rmsnorm", "RMSNorm", lambda num_features, *, dtype, eps=1e-5, **_: RMSNorm(num_features, eps, dtype=dtype),
         doc="layers/rmsnorm.md", backward=backward, pools="sample", centres=False, invariance="per sample")
