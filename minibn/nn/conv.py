"""2-D convolution, channels-last (NHWC): im2col and one GEMM.

Shapes: x (N, H, W, C), W (kh, kw, C, O), b (O,), y (N, Ho, Wo, O) with
Ho = (H + 2 ph - kh) // sh + 1 and Wo = (W + 2 pw - kw) // sw + 1 (see
:mod:`minibn.nn.im2col` for x_pad, windows, im2col and col2im).

Forward (a cross-correlation, as in every deep-learning library):

    y[n, ho, wo, o] = b[o] + sum_{i, j, c} x_pad[n, ho*sh + i, wo*sw + j, c] W[i, j, c, o]

which is a Dense layer on the patches: with cols = im2col(x_pad), shape (N*Ho*Wo, kh*kw*C),
and W2 = W.reshape(kh*kw*C, O),

    y2 = cols W2 + b                              (y2 = y.reshape(N*Ho*Wo, O))

Backward, given dy (dy2 = dy.reshape(N*Ho*Wo, O)), as for Dense:

    dW = (cols^T dy2).reshape(kh, kw, C, O)
    db = sum of the rows of dy2
    dx = col2im(dy2 W2^T)                                       route "col2im"

or, the same dx as a stride-1 convolution of the dilated, padded dy with the flipped
kernel (route "transposed"): on a zero grid dy_grid of shape (N, H + kh - 1, W + kw - 1, O),

    dy_grid[n, ho*sh + kh-1-ph, wo*sw + kw-1-pw, o] = dy[n, ho, wo, o]    (where inside the grid)
    W_flip[i, j, o, c] = W[kh-1-i, kw-1-j, c, o]
    dx[n, h, w, c] = sum_{i, j, o} dy_grid[n, h + i, w + j, o] W_flip[i, j, o, c]
                   = (im2col(dy_grid) W_flip.reshape(kh*kw*O, C)).reshape(N, H, W, C)

Second order (tangents along x_t, W_t, b_t; dy_t the tangent of dy): the conv is bilinear
in (x, W), and so is its backward in ((x, W), dy), so

    y_t            = conv(x_t, W) + conv(x, W_t) + b_t
    (dx_t, dW_t)   = backward(dy_t) at (x, W)  +  backward(dy) at (x_t, W_t)
    db_t           = sum of the rows of dy_t2

docs/layers/conv.md derives both. Neither uses a scatter-add. ``dx_route="auto"`` takes
"transposed" for stride 1 when C >= O (one GEMM, no slice-add passes; measured faster
for 64->64 at 32x32) and "col2im" otherwise: with a stride the grid is mostly zeros, and
with C < O the transposed patch matrix (width kh*kw*O) is wider than dcols (kh*kw*C)
(measured 2x faster for the first layer, 3->64).

Every sum above splits over the images, so cols (and dy_grid) are built for a block of
images at a time (:func:`~minibn.nn.im2col.image_chunks`, a few MB each) and dropped:
the cache keeps only x, kh*kw times smaller than cols, and backward rebuilds the blocks.
On NumPy this is faster than one whole-batch patch matrix (hundreds of MB for a VGG
layer, mapped and page-faulted afresh at every call) and keeps the peak memory near
that of the activations.
"""

from minibn import backend
from minibn.nn import init as _init
from minibn.nn.im2col import col2im, im2col, image_chunks, output_size, pad, pair, span
from minibn.nn.layer import Layer, LayerError, check_input

DX_ROUTES = ("auto", "col2im", "transposed")


def forward(x, W, b=None, stride=(1, 1), padding=(0, 0)):
    """y = conv(x, W) + b; returns ``(y, cache)``. Inputs are assumed valid (see :class:`Conv2d`)."""
    xp = backend.array_module(x)
    n, h, w, _ = x.shape
    kh, kw, c, out = W.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
    W2 = W.reshape(-1, out)
    y = xp.empty((n, ho, wo, out), dtype=x.dtype)
    for part in image_chunks(xp, n, ho * wo * W2.shape[0] * x.itemsize):
        cols = im2col(pad(x[part], ph, pw), kh, kw, sh, sw)
        xp.matmul(cols, W2, out=y[part].reshape(-1, out))
    if b is not None:
        y += b
    return y, (x, W, stride, padding, b is not None)


def backward(dy, cache, dx_route="auto"):
    """``(dx, {"W": dW, "b": db})`` for dy = dL/dy; ``dx_route`` picks how dx is computed."""
    x, W, stride, padding, has_bias = cache
    xp = backend.array_module(dy)
    n, h, w, c = x.shape
    kh, kw, _, out = W.shape
    if dx_route not in DX_ROUTES:
        raise ValueError(f"conv.backward: dx_route must be one of {DX_ROUTES}, got {dx_route!r}")
    if dx_route == "auto":
        dx_route = "transposed" if stride == (1, 1) and c >= out else "col2im"
    W2 = W.reshape(-1, out)
    if dx_route == "transposed":
        W_flip = W[::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, c)
    dW2 = xp.zeros_like(W2)
    dx = xp.empty(x.shape, dtype=dy.dtype)
    patch_bytes = kh * kw * max(dy.shape[1] * dy.shape[2] * c, h * w * out) * dy.itemsize  # per image
    for part in image_chunks(xp, n, patch_bytes):
        dy2 = dy[part].reshape(-1, out)
        dW2 += im2col(pad(x[part], *padding), kh, kw, *stride).T @ dy2
        if dx_route == "transposed":
            dy_grid = _dilate_and_pad(dy[part], (h, w), kh, kw, stride, padding)
            xp.matmul(im2col(dy_grid, kh, kw, 1, 1), W_flip, out=dx[part].reshape(-1, c))
        else:
            col2im(dy2 @ W2.T, dx[part].shape, kh, kw, *stride, *padding, out=dx[part])
    grads = {"W": dW2.reshape(W.shape)}
    if has_bias:
        grads["b"] = backend.sum_rows(dy.reshape(-1, out))
    return dx, grads


def tangent_forward(x_t, W_t, b_t, cache):
    """``(y_t, (x_t, W_t))``: y_t = conv(x_t, W) + conv(x, W_t) + b_t at the point of ``cache``."""
    x, W, stride, padding, _ = cache
    y_t = forward(x_t, W, b_t, stride, padding)[0]
    y_t += forward(x, W_t, None, stride, padding)[0]
    return y_t, (x_t, W_t)


def tangent_backward(dy, dy_t, cache, tangent_cache):
    """``(dx_t, grads_t)``: backward of dy_t at (x, W) plus backward of dy at (x_t, W_t)."""
    x, W, stride, padding, has_bias = cache
    x_t, W_t = tangent_cache
    dx_t, grads_t = backward(dy_t, cache)
    dx_moved, grads_moved = backward(dy, (x_t, W_t, stride, padding, False))
    dx_t += dx_moved
    grads_t["W"] += grads_moved["W"]
    return dx_t, grads_t


def _dilate_and_pad(dy, size, kh, kw, stride, padding):
    """dy_grid of the docstring: dy spread out by the stride on a zero (N, H+kh-1, W+kw-1, O) grid."""
    xp = backend.array_module(dy)
    (h, w), (sh, sw), (ph, pw) = size, stride, padding
    dy_grid = xp.zeros((dy.shape[0], h + kh - 1, w + kw - 1, dy.shape[3]), dtype=dy.dtype)
    rows_dy, rows_grid = span(kh - 1 - ph, dy.shape[1], sh, h + kh - 1)
    cols_dy, cols_grid = span(kw - 1 - pw, dy.shape[2], sw, w + kw - 1)
    dy_grid[:, rows_grid, cols_grid, :] = dy[:, rows_dy, cols_dy, :]
    return dy_grid


class Conv2d(Layer):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)``.

    NHWC in and out; params ``"W"`` (kh, kw, in, out) (Glorot by default) and ``"b"``
    (out,) (zeros). ``kernel_size``, ``stride`` (>= 1) and ``padding`` (>= 0, zeros) are an
    int or a (rows, cols) pair. A conv starts a parameter block, like Dense.
    """

    starts_block = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, *,
                 rng=None, dtype="float32", init="glorot_uniform"):
        super().__init__()
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not hasattr(v, "__index__") or v < 1:
                raise ValueError(f"Conv2d: {arg} must be a positive integer, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = pair(stride, "stride", "Conv2d")
        self.padding = pair(padding, "padding", "Conv2d", minimum=0)
        shape = (*self.kernel_size, self.in_channels, self.out_channels)
        self.params["W"] = _init.get_initializer(init)(shape, rng, dtype)
        if bias:
            self.params["b"] = backend.host.zeros(self.out_channels, dtype=dtype)
        self.bias = bool(bias)

    def describe(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias})")

    def _apply(self, params, x, mode):
        W = params["W"]
        check_input(self, "x", x, ndims=(4,), last_dim=self.in_channels, dtype=W.dtype)
        if backend.array_module(x) is not backend.array_module(W):
            raise LayerError(f"{self.describe()}: x is a {backend.name_of(backend.array_module(x))} array but the "
                             f"parameters live on {backend.name_of(backend.array_module(W))}; use layer.to(...)")
        padded = (x.shape[1] + 2 * self.padding[0], x.shape[2] + 2 * self.padding[1])
        if padded[0] < self.kernel_size[0] or padded[1] < self.kernel_size[1]:
            raise LayerError(f"{self.describe()}: kernel {self.kernel_size} is larger than the padded input "
                             f"{padded} (x of shape {tuple(x.shape)}, padding {self.padding})")
        return forward(x, W, params.get("b"), self.stride, self.padding)

    def _backward(self, dy, cache):
        return backward(dy, cache)

    def _tangent_forward(self, x_t, params_t, cache):
        return tangent_forward(x_t, params_t["W"], params_t.get("b"), cache)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        return tangent_backward(dy, dy_t, cache, tangent_cache)
