"""Lp normalization (protocol.md §2): BatchNorm with the standard deviation replaced by
the power mean N_p of the *uncentred* values, p in {1, 2, inf}.

For a channel j, the m = N (or N*H*W) values y_i pooled over every axis but the last:

Forward (train and probe modes, batch statistics):

    mu    = (1/m) sum_i y_i
    N_1   = (1/m) sum_i |y_i|          N_2 = sqrt((1/m) sum_i y_i^2)          N_inf = max_i |y_i|
    denom = N_p + eps                  (eps added to the norm, for every p)
    x_hat = (y - mu) / denom
    z     = gamma * x_hat + beta

Backward, with dz = dL/dz (derived in docs/layers/lpnorm.md):

    dbeta  = sum_i dz_i
    dgamma = sum_i dz_i * x_hat_i
    dy     = (gamma / denom) * (dz - dbeta / m - dgamma * dN)

where dN = dN_p/dy is

    p = 1:    dN_i = sign(y_i) / m          (subgradient sign(0) = 0 at y_i = 0)
    p = 2:    dN_i = y_i / (m N_2)          (0 for a channel that is all zeros)
    p = inf:  dN_i = sign(y_i) if i is the first index of max_i |y_i|, else 0
              (at ties the first maximizer takes the whole subgradient)

Eval mode uses running statistics, an affine map per channel:

    z = gamma * (y - running_mean) / (running_norm + eps) + beta,    dy = dz * gamma / (running_norm + eps)

In train mode running_mean <- (1 - momentum) running_mean + momentum mu and
running_norm <- (1 - momentum) running_norm + momentum N_p (the batch's N_p, uncorrected).
"""

import math
import numbers

from minibn import backend
from minibn.nn.batchnorm import AffineNorm, column_sums
from minibn.nn.normalization import register

PS = (1, 2, math.inf)


def _rows(y):
    """View y as (m, C): every axis but the last is a batch axis."""
    return y.reshape(-1, y.shape[-1])


def parse_p(p, where="LpNorm"):
    """1, 2 or math.inf (also accepts "inf"); anything else is a ValueError naming ``where``."""
    if isinstance(p, str) and p.strip().lower() in ("inf", "infinity"):
        return math.inf
    if not isinstance(p, bool) and isinstance(p, numbers.Real) and p in PS:
        return math.inf if p == math.inf else int(p)
    raise ValueError(f"{where}: p must be 1, 2 or inf (math.inf or 'inf'), got {p!r}")


def norm(y2, p):
    """N_p per column of the (m, C) array y2."""
    xp = backend.array_module(y2)
    if p == 1:
        return column_sums(xp.abs(y2)) * (1.0 / y2.shape[0])
    if p == 2:
        return xp.sqrt(column_sums(y2 * y2) * (1.0 / y2.shape[0]))
    return xp.abs(y2).max(axis=0)


def norm_grad(y2, p, n_p):
    """dN_p/dy for the (m, C) array y2 with its norms n_p (the subgradients of the module docstring)."""
    xp = backend.array_module(y2)
    m = y2.shape[0]
    if p == 1:
        return xp.sign(y2) * (1.0 / m)
    if p == 2:
        return y2 / (m * xp.where(n_p > 0, n_p, 1.0))   # y = 0 wherever N_2 = 0, so dN = 0 there
    columns = xp.arange(y2.shape[1])
    first_max = xp.abs(y2).argmax(axis=0)
    dn = xp.zeros_like(y2)
    dn[first_max, columns] = xp.sign(y2[first_max, columns])
    return dn


def forward(y, gamma, beta, p, eps=1e-5, mean=None, n_p=None):
    """Normalize with the batch statistics, or with ``mean``/``n_p`` when given (eval).

    Returns ``(z, cache, (mean, n_p))``.
    """
    y2 = _rows(y)
    batch = mean is None
    if batch:
        mean = column_sums(y2) * (1.0 / y2.shape[0])
        n_p = norm(y2, p)
    inv_denom = 1.0 / (n_p + eps)
    x_hat = (y2 - mean) * inv_denom
    z = x_hat * gamma + beta
    cache = (y2, x_hat, gamma, inv_denom, n_p, p, batch, y.shape)
    return z.reshape(y.shape), cache, (mean, n_p)


def backward(dz, cache):
    """dy, {"gamma", "beta"} (see module docstring)."""
    y2, x_hat, gamma, inv_denom, n_p, p, batch, shape = cache
    dz2 = _rows(dz)
    m = y2.shape[0]
    dbeta = column_sums(dz2)
    dgamma = column_sums(dz2 * x_hat)
    if batch:
        dy = (dz2 - dbeta * (1.0 / m) - dgamma * norm_grad(y2, p, n_p)) * (gamma * inv_denom)
    else:
        dy = dz2 * (gamma * inv_denom)
    return dy.reshape(shape), {"gamma": dgamma, "beta": dbeta}


class LpNorm(AffineNorm):
    """``LpNorm(num_features, p, eps=1e-5, momentum=0.1, *, dtype="float32")``, p in {1, 2, inf}.

    Params ``"gamma"`` (=1), ``"beta"`` (=0); state ``running_mean`` (=0), ``running_norm`` (=1).
    """

    buffers = ("running_mean", "running_norm")

    def __init__(self, num_features, p, eps=1e-5, momentum=0.1, *, dtype="float32", xp=None):
        self.p = parse_p(p)
        super().__init__(num_features, eps, momentum, dtype=dtype, xp=xp)

    def describe(self):
        return f"LpNorm({self.num_features}, p={self.p}, eps={self.eps:g}, momentum={self.momentum:g})"

    def _forward(self, y, mode):
        self._check(y, mode)
        g, b = self.params["gamma"], self.params["beta"]
        if mode == "eval":
            z, cache, _ = forward(y, g, b, self.p, self.eps, self.running_mean, self.running_norm)
            return z, cache
        z, cache, (mean, n_p) = forward(y, g, b, self.p, self.eps)
        if mode == "train":
            mom = self.momentum
            self.running_mean = (1.0 - mom) * self.running_mean + mom * mean
            self.running_norm = (1.0 - mom) * self.running_norm + mom * n_p
        return z, cache

    def _backward(self, dz, cache):
        return backward(dz, cache)



register("l1", "L1 norm", "C4", lambda num_features, *, dtype, **_: LpNorm(num_features, 1, dtype=dtype))
register("l2", "L2 norm", "C5", lambda num_features, *, dtype, **_: LpNorm(num_features, 2, dtype=dtype))
register("linf", "L∞ norm", "C6", lambda num_features, *, dtype, **_: LpNorm(num_features, math.inf, dtype=dtype))
