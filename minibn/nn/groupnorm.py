"""Group normalization, channels-last: each sample's channels split into G groups of C/G, each
group normalized over its channels and all positions (Wu and He, 2018).

For a sample n and group g, the m = S * C/G values x_i of ``sample_groups(x, G)[n, :, g, :]``
(S = H*W positions of an (N, H, W, C) input, 1 of an (N, C) one):

Forward (every mode: the statistics are the sample's own), :func:`forward`:

    mu      = (1/m) sum_i x_i
    var     = (1/m) sum_i (x_i - mu)^2
    inv_std = 1 / sqrt(var + eps)
    x_hat   = (x - mu) * inv_std
    y       = gamma * x_hat + beta                (gamma, beta per channel)

Backward, with dy = dL/dy (derived in docs/layers/groupnorm.md), :func:`backward`:

    dbeta  = sum over samples and positions of dy          (per channel)
    dgamma = sum over samples and positions of dy * x_hat  (per channel)
    dx_hat = dy * gamma
    dx     = (inv_std / m) * (m * dx_hat - sum_i dx_hat_i - x_hat * sum_i dx_hat_i x_hat_i)

the sums over i running over the group. That is BatchNorm's dx with the group in place of the
channel and dx_hat = gamma * dy in place of gamma * dy (gamma varies inside a group, so it stays
inside the sums). Samples never mix: there are no running statistics, and train, eval and probe
are one map. LayerNorm is the case G = 1 (:mod:`minibn.nn.layernorm`).

Second order (the exact Hessian-vector product, :meth:`minibn.nn.Sequential.hvp`): tangents x_t,
gamma_t, beta_t, dy_t of x, gamma, beta, dy, with mean(.) and sum(.) over the group,
:func:`tangent_forward` and :func:`tangent_backward`, BatchNorm's with the group for the channel:

    inv_std_t = -inv_std^2 * mean(x_hat * x_t)
    x_hat_t   = inv_std * (x_t - mean(x_t) - x_hat * mean(x_hat * x_t))
    y_t       = gamma_t * x_hat + gamma * x_hat_t + beta_t
    dx_hat_t  = dy_t * gamma + dy * gamma_t
    dx_t      = (inv_std_t / m) * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))
              + (inv_std / m) * (m * dx_hat_t - sum(dx_hat_t) - x_hat_t * sum(dx_hat * x_hat)
                                 - x_hat * sum(dx_hat_t * x_hat + dx_hat * x_hat_t))
    dgamma_t  = sum over samples and positions of dy_t * x_hat + dy * x_hat_t,   dbeta_t = that of dy_t
"""

from typing import Any, NamedTuple

from minibn.nn.normalization import AffineNorm, group_columns, register, sample_groups


class Cache(NamedTuple):
    """What the backward needs: (N, S, G, C/G) ``x_hat``, per-channel ``gamma``, (N, 1, G, 1)
    ``inv_std``; and the groups' ``mu`` and ``var`` (same shape), for inspection."""

    x_hat: Any
    gamma: Any
    inv_std: Any
    mu: Any
    var: Any


def forward(x, gamma, beta, num_groups, eps=1e-5):
    """``(y, Cache)``: normalize each sample's groups, line by line as in the module docstring."""
    xg = sample_groups(x, num_groups)
    m = xg.shape[1] * xg.shape[3]
    mu = xg.sum(axis=(1, 3), keepdims=True) * (1.0 / m)
    centred = xg - mu
    var = (centred * centred).sum(axis=(1, 3), keepdims=True) * (1.0 / m)
    inv_std = 1.0 / (var + eps) ** 0.5
    x_hat = centred * inv_std
    y = gamma * x_hat.reshape(x.shape) + beta
    return y, Cache(x_hat, gamma, inv_std, mu, var)


def backward(dy, cache):
    """``(dx, {"gamma", "beta"})`` by the closed form of the module docstring."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    m = x_hat.shape[1] * x_hat.shape[3]
    channels = dy.shape[-1]
    dbeta = dy.reshape(-1, channels).sum(axis=0)
    dgamma = (dy.reshape(-1, channels) * x_hat.reshape(-1, channels)).sum(axis=0)
    dx_hat = sample_groups(dy * gamma, x_hat.shape[2])
    dx = (inv_std / m) * (m * dx_hat - dx_hat.sum(axis=(1, 3), keepdims=True)
                          - x_hat * (dx_hat * x_hat).sum(axis=(1, 3), keepdims=True))
    return dx.reshape(dy.shape), {"gamma": dgamma, "beta": dbeta}


class TangentCache(NamedTuple):
    """What the tangent of the backward needs: (N, S, G, C/G) ``x_hat_t``, (N, 1, G, 1) ``inv_std_t``,
    per-channel ``gamma_t``."""

    x_hat_t: Any
    gamma_t: Any
    inv_std_t: Any


AXES = (1, 3)   # the group's positions and channels in the (N, S, G, C/G) view


def tangent_forward(x_t, gamma_t, beta_t, cache):
    """``(y_t, TangentCache)`` at the point of ``cache`` (module docstring)."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    xg_t = sample_groups(x_t, x_hat.shape[2])
    m = x_hat.shape[1] * x_hat.shape[3]
    projected = (x_hat * xg_t).sum(axis=AXES, keepdims=True) * (1.0 / m)
    inv_std_t = -inv_std * inv_std * projected
    x_hat_t = inv_std * (xg_t - xg_t.sum(axis=AXES, keepdims=True) * (1.0 / m) - x_hat * projected)
    y_t = gamma_t * x_hat.reshape(x_t.shape) + gamma * x_hat_t.reshape(x_t.shape) + beta_t
    return y_t, TangentCache(x_hat_t, gamma_t, inv_std_t)


def tangent_backward(dy, dy_t, cache, tangent_cache):
    """``(dx_t, {"gamma", "beta"})``, the tangent of :func:`backward` (module docstring)."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    x_hat_t, gamma_t, inv_std_t = tangent_cache
    m, groups, channels = x_hat.shape[1] * x_hat.shape[3], x_hat.shape[2], dy.shape[-1]
    dx_hat = sample_groups(dy * gamma, groups)
    dx_hat_t = sample_groups(dy_t * gamma + dy * gamma_t, groups)
    along_x_hat = (dx_hat * x_hat).sum(axis=AXES, keepdims=True)
    along_x_hat_t = (dx_hat_t * x_hat + dx_hat * x_hat_t).sum(axis=AXES, keepdims=True)
    dx_t = (inv_std_t / m) * (m * dx_hat - dx_hat.sum(axis=AXES, keepdims=True) - x_hat * along_x_hat) \
        + (inv_std / m) * (m * dx_hat_t - dx_hat_t.sum(axis=AXES, keepdims=True) - x_hat_t * along_x_hat
                           - x_hat * along_x_hat_t)
    dgamma_t = (dy_t * x_hat.reshape(dy.shape) + dy * x_hat_t.reshape(dy.shape)).reshape(-1, channels).sum(axis=0)
    return dx_t.reshape(dy.shape), {"gamma": dgamma_t, "beta": dy_t.reshape(-1, channels).sum(axis=0)}


def default_groups(num_channels, max_groups=32):
    """The models' group count: the largest divisor G of ``num_channels`` with G <= ``max_groups``
    and at least 2 channels per group (Wu and He's 32 groups where C allows; a group of one
    channel of a dense layer would hold one value, whose variance is 0). 1 when none exists.

    >>> [default_groups(c) for c in (10, 16, 64, 512, 7)]
    [5, 8, 32, 32, 1]
    """
    return max((g for g in range(1, max_groups + 1) if num_channels % g == 0 and num_channels // g >= 2), default=1)


class GroupNorm(AffineNorm):
    """``GroupNorm(num_groups, num_channels, eps=1e-5)``: params ``"gamma"`` (=1), ``"beta"`` (=0)
    per channel; no state. ``num_channels`` must be a multiple of ``num_groups``."""

    buffers = ()

    def __init__(self, num_groups, num_channels, eps=1e-5, *, dtype="float32", xp=None):
        name = type(self).__name__
        if isinstance(num_groups, bool) or not hasattr(num_groups, "__index__") or num_groups < 1:
            raise ValueError(f"{name}: num_groups must be a positive integer, got {num_groups!r}")
        super().__init__(num_channels, eps, dtype=dtype, xp=xp)
        if self.num_features % num_groups:
            raise ValueError(f"{name}: num_channels={self.num_features} is not divisible by num_groups={num_groups}")
        self.num_groups = int(num_groups)

    def describe(self):
        return f"GroupNorm({self.num_groups}, {self.num_features}, eps={self.eps:g})"

    def pooled_view(self, x):
        return group_columns(x, self.num_groups)

    def _values_per_statistic(self, x):
        return x.size // max(x.shape[0] * self.num_groups, 1)

    def _apply(self, params, x, mode):
        self._check(x, mode)
        return forward(x, params["gamma"], params["beta"], self.num_groups, self.eps)

    def _backward(self, dy, cache):
        return backward(dy, cache)

    def _tangent_forward(self, x_t, params_t, cache):
        return tangent_forward(x_t, params_t["gamma"], params_t["beta"], cache)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        return tangent_backward(dy, dy_t, cache, tangent_cache)


def _make(num_features, *, dtype, num_groups=None, eps=1e-5, **_):
    """The models' GroupNorm: ``num_groups`` (a model option) is an int for every layer, a function
    of the layer's channel count, or None for :func:`default_groups`."""
    groups = default_groups if num_groups is None else num_groups
    return GroupNorm(groups(num_features) if callable(groups) else groups, num_features, eps, dtype=dtype)


register("groupnorm", "GroupNorm", _make, color="C9", doc="layers/groupnorm.md", backward=backward,
         pools="sample and group", centres=True, invariance="per sample and group")
