"""Weight normalization (Salimans and Kingma, 2016): a Dense or Conv2d layer whose weight W is
reparametrized per output unit as a length g times a direction v/||v||.

The output unit is W's last axis (Dense W: (in, out), Conv2d W: (kh, kw, in, out)); with v2 =
v.reshape(-1, out), column j holding unit j's weights:

Forward, :func:`forward` (the wrapped layer then runs with this W):

    inv_norm = 1 / ||v_j||             (per unit j: the Euclidean norm of column j of v2)
    v_hat    = v * inv_norm
    W        = g * v_hat

Backward, given dW = dL/dW from the wrapped layer's backward (derived in
docs/layers/weightnorm.md), :func:`backward`:

    dg = sum over unit j's weights of dW * v_hat       ( = <dW_j, v_j> / ||v_j|| )
    dv = (g * inv_norm) * (dW - v_hat * dg)             ( = (g/||v||)(dW - (<dW, v>/||v||^2) v) )

so dv is orthogonal to v, and the loss is unchanged by v_j -> a v_j (a > 0) while dv scales as
1/a: the scale invariance of docs/theory.md with v in place of the weights before a BN. There is
no eps: a unit with v_j = 0 has no direction (its W and gradients are NaN).

Second order (the exact Hessian-vector product, :meth:`minibn.nn.Sequential.hvp`): tangents v_t,
g_t of v, g and dW_t of dW (the wrapped layer's tangent passes give W_t's effect and dW_t), sums
per unit, :func:`tangent_forward` and :func:`tangent_backward`:

    inv_norm_t = -inv_norm^2 * sum(v_hat * v_t)
    v_hat_t    = inv_norm * (v_t - v_hat * sum(v_hat * v_t))
    W_t        = g_t * v_hat + g * v_hat_t
    dg_t       = sum(dW_t * v_hat + dW * v_hat_t)
    dv_t       = (g_t * inv_norm + g * inv_norm_t) * (dW - v_hat * dg)
               + (g * inv_norm) * (dW_t - v_hat_t * dg - v_hat * dg_t)
"""

from typing import Any, NamedTuple

from minibn import backend
from minibn.nn.conv import Conv2d
from minibn.nn.dense import Dense
from minibn.nn.layer import Layer
from minibn.nn.normalization import register


class Cache(NamedTuple):
    """What the backward needs: ``v_hat`` (v's shape), per-unit ``g`` and ``inv_norm``."""

    v_hat: Any
    g: Any
    inv_norm: Any


def forward(v, g):
    """``(W, Cache)``: W = g * v / ||v|| per output unit (module docstring)."""
    xp = backend.array_module(v)
    v2 = v.reshape(-1, v.shape[-1])
    inv_norm = 1.0 / xp.sqrt((v2 * v2).sum(axis=0))
    v_hat = v * inv_norm
    W = g * v_hat
    return W, Cache(v_hat, g, inv_norm)


def backward(dW, cache):
    """``{"g": dg, "v": dv}`` for dW = dL/dW (module docstring)."""
    v_hat, g, inv_norm = cache
    dg = (dW * v_hat).reshape(-1, dW.shape[-1]).sum(axis=0)
    dv = (g * inv_norm) * (dW - v_hat * dg)
    return {"g": dg, "v": dv}


class TangentCache(NamedTuple):
    """What the tangent of the backward needs: ``v_hat_t`` (v's shape), per-unit ``g_t``, ``inv_norm_t``."""

    v_hat_t: Any
    g_t: Any
    inv_norm_t: Any


def _unit_sums(a):
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def tangent_forward(v_t, g_t, cache):
    """``(W_t, TangentCache)`` at the point of ``cache`` (module docstring)."""
    v_hat, g, inv_norm = cache
    projected = _unit_sums(v_hat * v_t)
    inv_norm_t = -inv_norm * inv_norm * projected
    v_hat_t = inv_norm * (v_t - v_hat * projected)
    return g_t * v_hat + g * v_hat_t, TangentCache(v_hat_t, g_t, inv_norm_t)


def tangent_backward(dW, dW_t, cache, tangent_cache):
    """``{"g": dg_t, "v": dv_t}``, the tangent of :func:`backward` (module docstring)."""
    v_hat, g, inv_norm = cache
    v_hat_t, g_t, inv_norm_t = tangent_cache
    dg = _unit_sums(dW * v_hat)
    dg_t = _unit_sums(dW_t * v_hat + dW * v_hat_t)
    dv_t = (g_t * inv_norm + g * inv_norm_t) * (dW - v_hat * dg) \
        + (g * inv_norm) * (dW_t - v_hat_t * dg - v_hat * dg_t)
    return {"g": dg_t, "v": dv_t}


class WeightNorm(Layer):
    """``WeightNorm(layer)``: ``layer`` (a Dense or Conv2d) with its params ``"W"`` replaced by
    ``"g"`` (out,) and ``"v"`` (W's shape), initialized to the layer's W (v = W, g = ||W_j||), so
    the wrapped layer computes what it did; its bias ``"b"`` is kept. The wrapped layer (``.layer``)
    holds no parameters of its own: it runs on W = g v/||v|| through its functional face
    (:meth:`~minibn.nn.Layer.apply`, :meth:`~minibn.nn.Layer.apply_backward` and the tangent
    passes), input checks included. It starts a parameter block, as the layer it wraps."""

    starts_block = True

    def __init__(self, layer):
        super().__init__()
        if not isinstance(layer, (Dense, Conv2d)) or "W" not in layer.params:
            raise ValueError(f"WeightNorm: wraps a Dense or Conv2d layer, got {layer!r}")
        W = layer.params["W"]
        xp = backend.array_module(W)
        W2 = W.reshape(-1, W.shape[-1])
        self.params["g"] = xp.sqrt((W2 * W2).sum(axis=0))
        self.params["v"] = W.copy()
        if "b" in layer.params:
            self.params["b"] = layer.params["b"]
        layer.params = {}   # W is computed at every forward: the wrapped layer keeps no stale copy
        self.layer = layer

    def describe(self):
        return f"WeightNorm({self.layer.describe()})"

    @staticmethod
    def _inner(W, params):
        """The wrapped layer's parameters (or their tangents): W, and the bias of ``params`` if any."""
        return {"W": W, **({"b": params["b"]} if "b" in params else {})}

    def _apply(self, params, x, mode):
        W, wn_cache = forward(params["v"], params["g"])
        y, layer_cache = self.layer.apply(self._inner(W, params), x, mode)
        return y, (wn_cache, layer_cache)

    def _backward(self, dy, cache):
        wn_cache, layer_cache = cache
        dx, grads = self.layer.apply_backward(dy, layer_cache)
        out = backward(grads.pop("W"), wn_cache)
        return dx, {**out, **grads}

    def _tangent_forward(self, x_t, params_t, cache):
        wn_cache, layer_cache = cache
        W_t, wn_tangent = tangent_forward(params_t["v"], params_t["g"], wn_cache)
        y_t, layer_tangent = self.layer.apply_tangent_forward(x_t, self._inner(W_t, params_t), layer_cache)
        return y_t, (wn_tangent, layer_tangent)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        wn_cache, layer_cache = cache
        wn_tangent, layer_tangent = tangent_cache
        dW = self.layer.apply_backward(dy, layer_cache)[1]["W"]   # the point's dW, which the tangent of dv needs
        dx_t, grads_t = self.layer.apply_tangent_backward(dy, dy_t, layer_cache, layer_tangent)
        out = tangent_backward(dW, grads_t.pop("W"), wn_cache, wn_tangent)
        return dx_t, {**out, **grads_t}


register("weightnorm", "WeightNorm", lambda num_features, **_: None, color="#b8860b", reparametrize=WeightNorm,
         doc="layers/weightnorm.md", backward=backward, pools="unit's weights", centres=False, invariance="per unit")
