"""Batch normalization over every axis but the last (channels-last: (N, C) or (N, H, W, C)).

For a channel j, the m = N (or N*H*W) values x_ij pooled over the other axes:

Forward (train and probe modes, batch statistics), :func:`forward`:

    mu      = (1/m) sum_i x_i
    var     = (1/m) sum_i (x_i - mu)^2              (biased batch variance)
    inv_std = 1 / sqrt(var + eps)
    x_hat   = (x - mu) * inv_std
    y       = gamma * x_hat + beta

Backward, with dy = dL/dy (derived step by step in docs/layers/batchnorm.md), :func:`backward`:

    dbeta  = sum_i dy_i
    dgamma = sum_i dy_i * x_hat_i
    dx     = (gamma * inv_std / m) * (m * dy - dbeta - x_hat * dgamma)

That is dx = (gamma * inv_std) P dy with P = I - 11^T/m - x_hat x_hat^T/m, the projection
of the paper's Section 4 (when eps = 0). :func:`backward_staged` computes the same dx by
the chain rule through var and mu one stage at a time, the textbook form.

The layer trains with :func:`forward_inplace` and :func:`backward_inplace`: the same
equations written to reuse the arrays they make (fewer fresh large arrays, which cost page
faults on NumPy), held equal to the plain pair by the tests.

Second order with batch statistics (train and probe modes; docs/layers/batchnorm.md), tangents
x_t, gamma_t, beta_t and dy_t of x, gamma, beta and dy, means (1/m) sum_i per channel,
:func:`tangent_forward` and :func:`tangent_backward`:

    inv_std_t = -inv_std^2 * mean(x_hat * x_t)
    x_hat_t   = inv_std * (x_t - mean(x_t) - x_hat * mean(x_hat * x_t))
    y_t       = gamma_t * x_hat + gamma * x_hat_t + beta_t
    dbeta_t   = sum_i dy_t_i
    dgamma_t  = sum_i (dy_t_i * x_hat_i + dy_i * x_hat_t_i)
    dx_t      = ((gamma_t * inv_std + gamma * inv_std_t) / m) * (m * dy - dbeta - x_hat * dgamma)
              + (gamma * inv_std / m) * (m * dy_t - dbeta_t - x_hat_t * dgamma - x_hat * dgamma_t)

Eval mode uses the running statistics instead, so it is an affine map per channel,
:func:`forward_eval` and :func:`backward_eval`:

    inv_std = 1 / sqrt(running_var + eps)
    y  = gamma * (x - running_mean) * inv_std + beta
    dx = dy * gamma * inv_std

and its tangents (inv_std is a constant), :func:`tangent_forward_eval` and :func:`tangent_backward_eval`:

    x_hat_t = x_t * inv_std
    y_t     = gamma_t * x_hat + gamma * x_hat_t + beta_t
    dbeta_t = sum_i dy_t_i,    dgamma_t = sum_i (dy_t_i * x_hat_i + dy_i * x_hat_t_i)
    dx_t    = (dy_t * gamma + dy * gamma_t) * inv_std

The layer's cache records the mode its forward ran in (:class:`~minibn.nn.normalization.ModeCache`),
which picks the backward and tangent pair of that mode.

In train mode the running statistics move towards the batch's with ``momentum``:
running_mean <- (1 - momentum) running_mean + momentum mu, and likewise
running_var with the *unbiased* batch variance var * m / (m - 1).
"""

from typing import Any, NamedTuple

from minibn import backend
from minibn.nn.layer import LayerError
from minibn.nn.normalization import (AffineNorm, ModeCache, affine_eval, affine_eval_backward,
                                     affine_eval_tangent_backward, affine_eval_tangent_forward, channel_rows,
                                     column_sums, register)


class Cache(NamedTuple):
    """What the batch-statistics backward needs ((m, C) ``x_hat``; per-channel ``gamma``,
    ``inv_std``), and the batch's ``mu`` and (biased) ``var`` for the running statistics."""

    x_hat: Any
    gamma: Any
    inv_std: Any
    mu: Any
    var: Any


def forward(x, gamma, beta, eps=1e-5):
    """``(y, Cache)``: normalize with the batch statistics, line by line as in the module docstring."""
    x2 = channel_rows(x)
    m = x2.shape[0]
    mu = column_sums(x2) * (1.0 / m)
    centred = x2 - mu
    var = column_sums(centred * centred) * (1.0 / m)
    inv_std = 1.0 / (var + eps) ** 0.5
    x_hat = centred * inv_std
    y = gamma * x_hat + beta
    return y.reshape(x.shape), Cache(x_hat, gamma, inv_std, mu, var)


def backward(dy, cache):
    """``(dx, {"gamma", "beta"})`` by the simplified closed form (module docstring)."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    dy2 = channel_rows(dy)
    m = dy2.shape[0]
    dbeta = column_sums(dy2)
    dgamma = column_sums(dy2 * x_hat)
    dx = (gamma * inv_std / m) * (m * dy2 - dbeta - x_hat * dgamma)
    return dx.reshape(dy.shape), {"gamma": dgamma, "beta": dbeta}


def forward_inplace(x, gamma, beta, eps=1e-5):
    """:func:`forward`, reusing the arrays it makes: two (m, C) arrays instead of five.

    The layer trains with it: fresh large arrays cost page faults on NumPy, and this took the
    BN of a conv3x3+BN+ReLU block from 86 to 56 ms CPU at 128x32x32x64.
    """
    x2 = channel_rows(x)
    m = x2.shape[0]
    xp = backend.array_module(x2)
    mu = column_sums(x2) * (1.0 / m)
    x_hat = x2 - mu                          # centred, normalized in place below
    y = x_hat * x_hat                        # scratch for the variance, reused as y
    var = column_sums(y) * (1.0 / m)
    inv_std = 1.0 / (var + eps) ** 0.5
    x_hat *= inv_std
    xp.multiply(x_hat, gamma, out=y)
    y += beta
    return y.reshape(x.shape), Cache(x_hat, gamma, inv_std, mu, var)


def backward_inplace(dy, cache):
    """:func:`backward`, reusing one (m, C) array for dy * x_hat and then dx (the layer's)."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    dy2 = channel_rows(dy)
    m = dy2.shape[0]
    xp = backend.array_module(dy2)
    dbeta = column_sums(dy2)
    dx = dy2 * x_hat                          # scratch for dgamma, reused as dx
    dgamma = column_sums(dx)
    # dx = gamma * inv_std * (dy - (x_hat * dgamma / m + dbeta / m))
    xp.multiply(x_hat, dgamma * (1.0 / m), out=dx)
    dx += dbeta * (1.0 / m)
    xp.subtract(dy2, dx, out=dx)
    dx *= gamma * inv_std
    return dx.reshape(dy.shape), {"gamma": dgamma, "beta": dbeta}


def backward_staged(dy, cache):
    """The same gradient by the chain rule, one forward stage at a time (batch statistics only).

        dx_hat = dy * gamma
        dvar   = sum_i dx_hat_i * (x_i - mu) * (-1/2) (var + eps)^(-3/2)
        dmu    = -sum_i dx_hat_i * inv_std  +  dvar * (-2/m) sum_i (x_i - mu)      (second term is 0)
        dx     = dx_hat * inv_std + dvar * 2 (x - mu) / m + dmu / m
    """
    if not isinstance(cache, Cache):
        raise LayerError("batchnorm.backward_staged: only defined for batch statistics (train/probe mode), "
                         f"got a {type(cache).__name__}")
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    dy2 = channel_rows(dy)
    m = dy2.shape[0]
    centred = x_hat / inv_std
    dx_hat = dy2 * gamma
    dvar = (dx_hat * centred).sum(axis=0) * (-0.5) * inv_std ** 3
    dmu = -(dx_hat * inv_std).sum(axis=0) + dvar * (-2.0 / m) * centred.sum(axis=0)
    dx = dx_hat * inv_std + dvar * 2.0 * centred / m + dmu / m
    grads = {"gamma": (dy2 * x_hat).sum(axis=0), "beta": dy2.sum(axis=0)}
    return dx.reshape(dy.shape), grads


def forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """``(y, EvalCache)``: the per-channel affine map of eval mode with inv_std = 1/sqrt(running_var + eps)
    as its ``inv_scale`` (module docstring; :func:`minibn.nn.normalization.affine_eval`)."""
    return affine_eval(x, gamma, beta, running_mean, 1.0 / (running_var + eps) ** 0.5)


#: Eval mode's backward and tangents: those of the affine map every normalizer with running
#: statistics shares (module docstring; minibn.nn.normalization).
backward_eval = affine_eval_backward
tangent_forward_eval = affine_eval_tangent_forward
tangent_backward_eval = affine_eval_tangent_backward


class TangentCache(NamedTuple):
    """What the tangent of the backward needs: (m, C) ``x_hat_t``; per-channel ``gamma_t``, ``inv_std_t``."""

    x_hat_t: Any
    gamma_t: Any
    inv_std_t: Any


def tangent_forward(x_t, gamma_t, beta_t, cache):
    """``(y_t, TangentCache)`` at the point of the batch-statistics ``cache`` (module docstring)."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    x_t2 = channel_rows(x_t)
    m = x_t2.shape[0]
    projected = column_sums(x_hat * x_t2) * (1.0 / m)
    inv_std_t = -inv_std * inv_std * projected
    x_hat_t = inv_std * (x_t2 - column_sums(x_t2) * (1.0 / m) - x_hat * projected)
    y_t = gamma_t * x_hat + gamma * x_hat_t + beta_t
    return y_t.reshape(x_t.shape), TangentCache(x_hat_t, gamma_t, inv_std_t)


def tangent_backward(dy, dy_t, cache, tangent_cache):
    """``(dx_t, {"gamma", "beta"})``, the tangent of :func:`backward` (module docstring)."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    x_hat_t, gamma_t, inv_std_t = tangent_cache
    dy2, dy_t2 = channel_rows(dy), channel_rows(dy_t)
    m = dy2.shape[0]
    dbeta_t = column_sums(dy_t2)
    dgamma_t = column_sums(dy_t2 * x_hat + dy2 * x_hat_t)
    dbeta, dgamma = column_sums(dy2), column_sums(dy2 * x_hat)
    dx_t = ((gamma_t * inv_std + gamma * inv_std_t) / m) * (m * dy2 - dbeta - x_hat * dgamma) \
        + (gamma * inv_std / m) * (m * dy_t2 - dbeta_t - x_hat_t * dgamma - x_hat * dgamma_t)
    return dx_t.reshape(dy.shape), {"gamma": dgamma_t, "beta": dbeta_t}


class BatchNorm(AffineNorm):
    """``BatchNorm(num_features, eps=1e-5, momentum=0.1, affine=True)``: params ``"gamma"`` (=1),
    ``"beta"`` (=0); with ``affine=False`` none, y = x_hat (gamma = 1 and beta = 0 held constant,
    the theory's case of Section 4; registered as "batchnorm_noaffine").

    State: ``running_mean`` (=0) and the unbiased ``running_var`` (=1).
    """

    def _apply(self, params, x, mode):
        self._check(x, mode)
        gamma, beta = self.gamma_beta(params)
        if mode == "eval":
            y, cache = forward_eval(x, gamma, beta, self.running_mean, self.running_var, self.eps)
        else:
            y, cache = forward_inplace(x, gamma, beta, self.eps)
            if mode == "train":
                self._update_running(cache.mu, cache.var, bessel_m=cache.x_hat.shape[0])
        return y, ModeCache(mode, cache)

    def _backward(self, dy, cache):
        backward_of_mode = backward_eval if cache.mode == "eval" else backward_inplace
        dx, grads = backward_of_mode(dy, cache.cache)
        return dx, grads if self.affine else {}

    def _tangent_forward(self, x_t, params_t, cache):
        tangent_of_mode = tangent_forward_eval if cache.mode == "eval" else tangent_forward
        # without affine parameters, gamma and beta are constants: their tangents are 0
        return tangent_of_mode(x_t, params_t.get("gamma", 0.0), params_t.get("beta", 0.0), cache.cache)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        tangent_of_mode = tangent_backward_eval if cache.mode == "eval" else tangent_backward
        dx_t, grads_t = tangent_of_mode(dy, dy_t, cache.cache, tangent_cache)
        return dx_t, grads_t if self.affine else {}


FACTS = {"doc": "layers/batchnorm.md", "backward": backward, "pools": "channel over batch", "centres": True,
         "invariance": "per channel"}
register("batchnorm", "BatchNorm",
         lambda num_features, *, dtype, eps=1e-5, **_: BatchNorm(num_features, eps, dtype=dtype), color="C1", **FACTS)
register("batchnorm_noaffine", "BatchNorm without gamma, beta",
         lambda num_features, *, dtype, eps=1e-5, **_: BatchNorm(num_features, eps, affine=False, dtype=dtype),
         color="C7", **FACTS)
