"""Dense (fully connected) layer.

Forward, for a batch ``x`` of shape (N, in):

    y = x W + b                    W: (in, out), b: (out,)

Backward, given dy = dL/dy of shape (N, out):

    dW = x^T dy                    (sum over the batch of outer products)
    db = sum_n dy[n]
    dx = dy W^T

Second order (tangents along x_t, W_t, b_t; dy_t the tangent of dy), bilinear:

    y_t  = x_t W + x W_t + b_t
    dW_t = x_t^T dy + x^T dy_t,    db_t = sum_n dy_t[n],    dx_t = dy_t W^T + dy W_t^T
"""

from minibn import backend
from minibn.nn import init as _init
from minibn.nn.layer import Layer, check_input


def forward(x, W, b=None):
    y = x @ W
    if b is not None:
        y += b
    return y, (x, W, b is not None)


def backward(dy, cache):
    x, W, has_bias = cache
    grads = {"W": x.T @ dy}
    if has_bias:
        grads["b"] = backend.sum_rows(dy)
    # W^T made contiguous first: NumPy's product with the transposed view took 1.7x as long at the
    # DLN's (1000, 10) x (10, 10), with the same result bit for bit there; at other shapes the
    # BLAS may sum in another order (last-bit differences, seen at width 20 and in float32)
    return dy @ backend.array_module(W).ascontiguousarray(W.T), grads


def tangent_forward(x_t, W_t, b_t, cache):
    """``(y_t, (x_t, W_t))``: y_t = x_t W + x W_t + b_t, at the point of ``cache``."""
    x, W, _ = cache
    y_t = forward(x_t, W, b_t)[0]
    y_t += x @ W_t
    return y_t, (x_t, W_t)


def tangent_backward(dy, dy_t, cache, tangent_cache):
    """``(dx_t, grads_t)``: backward is bilinear in ((x, W), dy), so its tangent is backward of
    dy_t at (x, W) plus backward of dy at (x_t, W_t)."""
    x_t, W_t = tangent_cache
    dx_t, grads_t = backward(dy_t, cache)
    dx_moved, grads_moved = backward(dy, (x_t, W_t, False))
    dx_t += dx_moved
    grads_t["W"] += grads_moved["W"]
    return dx_t, grads_t


class Dense(Layer):
    """``Dense(in_features, out_features, bias=True)``: params ``"W"`` (in, out), ``"b"`` (out,)."""

    starts_block = True

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype="float32", init="glorot_uniform"):
        super().__init__()
        for arg, v in (("in_features", in_features), ("out_features", out_features)):
            if int(v) != v or v < 1:
                raise ValueError(f"Dense: {arg} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.params["W"] = _init.get_initializer(init)((self.in_features, self.out_features), rng, dtype)
        if bias:
            self.params["b"] = backend.host.zeros(self.out_features, dtype=dtype)
        self.bias = bias

    def describe(self):
        return f"Dense({self.in_features}, {self.out_features}, bias={self.bias})"

    def _apply(self, params, x, mode):
        check_input(self, "x", x, ndims=(2,), last_dim=self.in_features, dtype=params["W"].dtype)
        return forward(x, params["W"], params.get("b"))

    def _backward(self, dy, cache):
        return backward(dy, cache)

    def _tangent_forward(self, x_t, params_t, cache):
        return tangent_forward(x_t, params_t["W"], params_t.get("b"), cache)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        return tangent_backward(dy, dy_t, cache, tangent_cache)
