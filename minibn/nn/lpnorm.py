"""Lp normalization (docs/protocol.md §2): BatchNorm with the standard deviation replaced by
the power mean ``norm`` = N_p of the *uncentred* values, p in {1, 2, inf}.

For a channel j, the m = N (or N*H*W) values x_i pooled over every axis but the last:

Forward (train and probe modes, batch statistics), :func:`forward`:

    mu       = (1/m) sum_i x_i
    norm     = N_p:  N_1 = (1/m) sum_i |x_i|    N_2 = sqrt((1/m) sum_i x_i^2)    N_inf = max_i |x_i|
    inv_norm = 1 / (norm + eps)            (eps added to the norm, for every p)
    x_hat    = (x - mu) * inv_norm
    y        = gamma * x_hat + beta

Backward, with dy = dL/dy (derived in docs/layers/lpnorm.md), :func:`backward`:

    dbeta  = sum_i dy_i
    dgamma = sum_i dy_i * x_hat_i
    dx     = (gamma * inv_norm) * (dy - dbeta / m - dgamma * dnorm)

where dnorm = dN_p/dx (:func:`lp_norm_grad`) is

    p = 1:    dnorm_i = sign(x_i) / m          (subgradient sign(0) = 0 at x_i = 0)
    p = 2:    dnorm_i = x_i / (m N_2)          (0 for a channel that is all zeros)
    p = inf:  dnorm_i = sign(x_i) if i is the first index of max_i |x_i|, else 0
              (at ties the first maximizer takes the whole subgradient)

Second order with batch statistics (train and probe modes; docs/layers/lpnorm.md), tangents
x_t, gamma_t, beta_t, dy_t; signs and the maximizer of p = 1 and inf held fixed (the piece x is
in), :func:`tangent_forward` and :func:`tangent_backward`:

    norm_t     = sum_i dnorm_i * x_t_i
    inv_norm_t = -inv_norm^2 * norm_t
    x_hat_t    = inv_norm * (x_t - mean(x_t) - x_hat * norm_t)
    y_t        = gamma_t * x_hat + gamma * x_hat_t + beta_t
    dnorm_t    = 0 (p = 1, inf);   (x_t - x * norm_t / norm) / (m * norm)  (p = 2; 0 where norm = 0)
    dbeta_t    = sum_i dy_t_i,     dgamma_t = sum_i (dy_t_i * x_hat_i + dy_i * x_hat_t_i)
    dx_t       = (gamma_t * inv_norm + gamma * inv_norm_t) * (dy - dbeta / m - dgamma * dnorm)
               + (gamma * inv_norm) * (dy_t - dbeta_t / m - dgamma_t * dnorm - dgamma * dnorm_t)

Eval mode uses running statistics, an affine map per channel, :func:`forward_eval` and
:func:`backward_eval`:

    inv_norm = 1 / (running_norm + eps)
    y  = gamma * (x - running_mean) * inv_norm + beta,    dx = dy * gamma * inv_norm

and its tangents (inv_norm is a constant), :func:`tangent_forward_eval` and :func:`tangent_backward_eval`:

    x_hat_t = x_t * inv_norm
    y_t     = gamma_t * x_hat + gamma * x_hat_t + beta_t
    dbeta_t = sum_i dy_t_i,    dgamma_t = sum_i (dy_t_i * x_hat_i + dy_i * x_hat_t_i)
    dx_t    = (dy_t * gamma + dy * gamma_t) * inv_norm

The layer's cache records the mode its forward ran in (:class:`~minibn.nn.normalization.ModeCache`),
which picks the backward and tangent pair of that mode.

In train mode running_mean <- (1 - momentum) running_mean + momentum mu and
running_norm <- (1 - momentum) running_norm + momentum norm (the batch's N_p, uncorrected).
"""

import math
import numbers
from typing import Any, NamedTuple

from minibn import backend
from minibn.nn.normalization import (AffineNorm, ModeCache, affine_eval, affine_eval_backward,
                                     affine_eval_tangent_backward, affine_eval_tangent_forward, channel_rows,
                                     column_sums, register)

PS = (1, 2, math.inf)


class Cache(NamedTuple):
    """What the batch-statistics backward needs ((m, C) ``x`` and ``x_hat``; per-channel
    ``gamma``, ``inv_norm``, ``norm``; ``p``; for p = inf the row of each channel's first
    maximizer, ``first_max``, else None), and the batch's ``mu`` for the running mean."""

    x: Any
    x_hat: Any
    gamma: Any
    inv_norm: Any
    mu: Any
    norm: Any
    p: Any
    first_max: Any = None


def parse_p(p, where="LpNorm"):
    """1, 2 or math.inf (also accepts "inf"); anything else is a ValueError naming ``where``."""
    if isinstance(p, str) and p.strip().lower() in ("inf", "infinity"):
        return math.inf
    if not isinstance(p, bool) and isinstance(p, numbers.Real) and p in PS:
        return math.inf if p == math.inf else int(p)
    raise ValueError(f"{where}: p must be 1, 2 or inf (math.inf or 'inf'), got {p!r}")


def lp_norm(x2, p):
    """N_p per column of the (m, C) array x2."""
    return lp_norm_and_maximizer(x2, p)[0]


def lp_norm_and_maximizer(x2, p):
    """``(N_p, first_max)`` per column of the (m, C) array x2; ``first_max`` (p = inf only, else
    None) is the row of the first maximizer of |x|, which the subgradient needs: N_inf is read
    there (the same value as the max, and the single reduction costs a third of ``max(axis=0)``'s)."""
    xp = backend.array_module(x2)
    if p == 1:
        return column_sums(xp.abs(x2)) * (1.0 / x2.shape[0]), None
    if p == 2:
        return xp.sqrt(column_sums(x2 * x2) * (1.0 / x2.shape[0])), None
    magnitude = xp.abs(x2)
    first_max = magnitude.argmax(axis=0)
    return magnitude[first_max, xp.arange(x2.shape[1])], first_max


def lp_norm_grad(x2, p, norm, first_max=None):
    """dnorm = dN_p/dx for the (m, C) array x2 with its norms (the subgradients of the module
    docstring); for p = inf, ``first_max`` from :func:`lp_norm_and_maximizer` saves finding it again."""
    xp = backend.array_module(x2)
    m = x2.shape[0]
    if p == 1:
        return xp.sign(x2) * (1.0 / m)
    if p == 2:
        return x2 / (m * xp.where(norm > 0, norm, 1.0))   # x = 0 wherever N_2 = 0, so dnorm = 0 there
    columns = xp.arange(x2.shape[1])
    if first_max is None:
        first_max = xp.abs(x2).argmax(axis=0)
    dnorm = xp.zeros_like(x2)
    dnorm[first_max, columns] = xp.sign(x2[first_max, columns])
    return dnorm


def forward(x, gamma, beta, p, eps=1e-5):
    """``(y, Cache)``: normalize with the batch statistics (module docstring)."""
    x2 = channel_rows(x)
    mu = column_sums(x2) * (1.0 / x2.shape[0])
    norm, first_max = lp_norm_and_maximizer(x2, p)
    inv_norm = 1.0 / (norm + eps)
    x_hat = (x2 - mu) * inv_norm
    y = x_hat * gamma + beta
    return y.reshape(x.shape), Cache(x2, x_hat, gamma, inv_norm, mu, norm, p, first_max)


def backward(dy, cache):
    """``(dx, {"gamma", "beta"})`` (module docstring)."""
    x_hat, gamma, inv_norm = cache.x_hat, cache.gamma, cache.inv_norm
    dy2 = channel_rows(dy)
    m = dy2.shape[0]
    dbeta = column_sums(dy2)
    dgamma = column_sums(dy2 * x_hat)
    dnorm = lp_norm_grad(cache.x, cache.p, cache.norm, cache.first_max)
    dx = (gamma * inv_norm) * (dy2 - dbeta * (1.0 / m) - dgamma * dnorm)
    return dx.reshape(dy.shape), {"gamma": dgamma, "beta": dbeta}


def forward_eval(x, gamma, beta, running_mean, running_norm, eps=1e-5):
    """``(y, EvalCache)``: the per-channel affine map of eval mode with inv_norm = 1/(running_norm + eps) as
    its ``inv_scale`` (module docstring; :func:`minibn.nn.normalization.affine_eval`)."""
    return affine_eval(x, gamma, beta, running_mean, 1.0 / (running_norm + eps))


#: Eval mode's backward and tangents: those of the affine map every normalizer with running
#: statistics shares (module docstring; minibn.nn.normalization).
backward_eval = affine_eval_backward
tangent_forward_eval = affine_eval_tangent_forward
tangent_backward_eval = affine_eval_tangent_backward


class TangentCache(NamedTuple):
    """What the tangent of the backward needs: (m, C) ``x_t``, ``x_hat_t``; per-channel
    ``gamma_t``, ``inv_norm_t``, ``norm_t``."""

    x_t: Any
    x_hat_t: Any
    gamma_t: Any
    inv_norm_t: Any
    norm_t: Any


def tangent_forward(x_t, gamma_t, beta_t, cache):
    """``(y_t, TangentCache)`` at the point of the batch-statistics ``cache`` (module docstring)."""
    x_hat, gamma, inv_norm = cache.x_hat, cache.gamma, cache.inv_norm
    x_t2 = channel_rows(x_t)
    m = x_t2.shape[0]
    norm_t = column_sums(lp_norm_grad(cache.x, cache.p, cache.norm, cache.first_max) * x_t2)
    x_hat_t = inv_norm * (x_t2 - column_sums(x_t2) * (1.0 / m) - x_hat * norm_t)
    y_t = gamma_t * x_hat + gamma * x_hat_t + beta_t
    return y_t.reshape(x_t.shape), TangentCache(x_t2, x_hat_t, gamma_t, -inv_norm * inv_norm * norm_t, norm_t)


def tangent_backward(dy, dy_t, cache, tangent_cache):
    """``(dx_t, {"gamma", "beta"})``, the tangent of :func:`backward` (module docstring)."""
    xp = backend.array_module(dy)
    x_hat, gamma, inv_norm = cache.x_hat, cache.gamma, cache.inv_norm
    x_t2, x_hat_t, gamma_t, inv_norm_t, norm_t = tangent_cache
    dy2, dy_t2 = channel_rows(dy), channel_rows(dy_t)
    dbeta_t = column_sums(dy_t2)
    dgamma_t = column_sums(dy_t2 * x_hat + dy2 * x_hat_t)
    m = dy2.shape[0]
    dbeta, dgamma = column_sums(dy2), column_sums(dy2 * x_hat)
    dnorm = lp_norm_grad(cache.x, cache.p, cache.norm, cache.first_max)
    if cache.p == 2:
        safe = xp.where(cache.norm > 0, cache.norm, 1.0)
        dnorm_t = (x_t2 - cache.x * (norm_t / safe)) / (m * safe)
    else:
        dnorm_t = 0.0
    dx_t = (gamma_t * inv_norm + gamma * inv_norm_t) * (dy2 - dbeta * (1.0 / m) - dgamma * dnorm) \
        + (gamma * inv_norm) * (dy_t2 - dbeta_t * (1.0 / m) - dgamma_t * dnorm - dgamma * dnorm_t)
    return dx_t.reshape(dy.shape), {"gamma": dgamma_t, "beta": dbeta_t}


class LpNorm(AffineNorm):
    """``LpNorm(num_features, p, eps=1e-5, momentum=0.1, *, dtype="float32")``, p in {1, 2, inf}.

    Params ``"gamma"`` (=1), ``"beta"`` (=0); state ``running_mean`` (=0), ``running_norm`` (=1).
    """

    inverse_spread = "inv_norm"

    buffers = ("running_mean", "running_norm")

    def __init__(self, num_features, p, eps=1e-5, momentum=0.1, *, dtype="float32", xp=None):
        self.p = parse_p(p)
        super().__init__(num_features, eps, momentum, dtype=dtype, xp=xp)

    def describe(self):
        return f"LpNorm({self.num_features}, p={self.p}, eps={self.eps:g}, momentum={self.momentum:g})"

    def _apply(self, params, x, mode):
        self._check(x, mode)
        gamma, beta = params["gamma"], params["beta"]
        if mode == "eval":
            y, cache = forward_eval(x, gamma, beta, self.running_mean, self.running_norm, self.eps)
        else:
            y, cache = forward(x, gamma, beta, self.p, self.eps)
            if mode == "train":
                self._update_running(cache.mu, cache.norm)
        return y, ModeCache(mode, cache)

    def _backward(self, dy, cache):
        backward_of_mode = backward_eval if cache.mode == "eval" else backward
        return backward_of_mode(dy, cache.cache)

    def _tangent_forward(self, x_t, params_t, cache):
        tangent_of_mode = tangent_forward_eval if cache.mode == "eval" else tangent_forward
        return tangent_of_mode(x_t, params_t["gamma"], params_t["beta"], cache.cache)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        tangent_of_mode = tangent_backward_eval if cache.mode == "eval" else tangent_backward
        return tangent_of_mode(dy, dy_t, cache.cache, tangent_cache)


FACTS = {"doc": "layers/lpnorm.md", "backward": backward, "pools": "channel over batch", "centres": True,
         "invariance": "per channel"}
register("l1", "L1 norm", lambda num_features, *, dtype, eps=1e-5, **_: LpNorm(num_features, 1, eps, dtype=dtype),
         color="C4", **FACTS)
register("l2", "L2 norm", lambda num_features, *, dtype, eps=1e-5, **_: LpNorm(num_features, 2, eps, dtype=dtype),
         color="C5", **FACTS)
register("linf", "L∞ norm", lambda num_features, *, dtype, eps=1e-5, **_: LpNorm(num_features, math.inf, eps, dtype=dtype),
         color="C6", **FACTS)
