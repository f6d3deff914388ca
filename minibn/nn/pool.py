"""Max pooling, channels-last (NHWC), any kernel and stride, no padding.

Shapes: x (N, H, W, C), y (N, Ho, Wo, C) with Ho = (H - kh) // sh + 1, Wo = (W - kw) // sw + 1.
For a kernel offset (i, j) let x_ij be the strided slice of x seen at that offset by
every window:

    x_ij[n, ho, wo, c] = x[n, ho*sh + i, wo*sw + j, c]

Forward: the maximum over the kh*kw offsets, and which offset holds it,

    y = max_{(i, j)} x_ij
    arg[n, ho, wo, c] = the FIRST offset k = i*kw + j (row-major) with x_ij = y

Backward: the gradient of a window goes to ONE input, its (first) argmax:

    dx[n, ho*sh + i, wo*sw + j, c] += dy[n, ho, wo, c] * [arg[n, ho, wo, c] == i*kw + j]

On ties max is not differentiable; taking the first maximum is a valid subgradient and
the same on NumPy and CuPy (docs/layers/pool.md).

Second order, the argmax held fixed (piecewise linear: the tangent of the piece x is in):

    y_t = x_t at arg:  y_t[n, ho, wo, c] = x_t_ij[n, ho, wo, c] with i*kw + j = arg[n, ho, wo, c]
    dx_t = backward(dy_t)

Paths. The common case, kernel == stride with H and W divisible (2x2/2 in VGG), tiles x
exactly: y is one reduction over x viewed as (N, Ho, kh, Wo, kw, C), and dx needs no
zero fill. Otherwise y is a running maximum over the strided slices x_ij. ``arg`` is
found by comparing each x_ij with y, last offset first so the first maximum is written
last. The backward writes one strided slice per offset: when windows do not overlap
(kh <= sh and kw <= sw) the slices of different offsets are disjoint and are assigned;
overlapping windows add their slices one offset at a time, so no scatter-add is needed.
"""

from minibn import backend
from minibn.nn.im2col import pair
from minibn.nn.layer import Layer, LayerError, check_input


def _slice(offset, count, stride):
    return slice(offset, offset + (count - 1) * stride + 1, stride)


def _windows(x, kernel, stride, out_size):
    """The strided slices x_ij for the offsets k = i*kw + j, in row-major order (views, no copies)."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_size
    return [x[:, _slice(k // kw, ho, sh), _slice(k % kw, wo, sw), :] for k in range(kh * kw)]


def _tiles(x_shape, kernel, stride, out_size):
    """Whether the windows tile x exactly: kernel == stride and H, W divisible by it."""
    return kernel == stride and x_shape[1] == out_size[0] * kernel[0] and x_shape[2] == out_size[1] * kernel[1]


def forward(x, kernel=(2, 2), stride=(2, 2)):
    """``(y, cache)`` with y the window maxima; inputs are assumed valid (see :class:`MaxPool2d`)."""
    xp = backend.array_module(x)
    (kh, kw), (sh, sw) = kernel, stride
    n, h, w, c = x.shape
    out_size = ((h - kh) // sh + 1, (w - kw) // sw + 1)
    windows = _windows(x, kernel, stride, out_size)
    if _tiles(x.shape, kernel, stride, out_size):   # fast path: one reduction over a reshape
        y = x.reshape(n, out_size[0], kh, out_size[1], kw, c).max(axis=(2, 4))
    else:
        y = windows[0].copy()
        for x_ij in windows[1:]:
            xp.maximum(y, x_ij, out=y)
    arg = xp.full(y.shape, kh * kw - 1, dtype=xp.uint8 if kh * kw <= 256 else xp.int32)
    for k in range(kh * kw - 2, -1, -1):   # last offset first, so the first maximum is written last
        arg -= (windows[k] == y) * (arg - k)   # arg = k where x_k holds the maximum (arg > k here: no wrap)
    return y, (arg, x.shape, kernel, stride)


def backward(dy, cache):
    """``(dx, {})``: each dy goes to its window's first argmax."""
    arg, x_shape, (kh, kw), (sh, sw) = cache
    xp = backend.array_module(dy)
    n, h, w, c = x_shape
    ho, wo = dy.shape[1:3]
    overlap = kh > sh or kw > sw
    tiles = _tiles(x_shape, (kh, kw), (sh, sw), (ho, wo))
    dx = xp.empty(x_shape, dtype=dy.dtype) if tiles else xp.zeros(x_shape, dtype=dy.dtype)
    for k, dx_ij in enumerate(_windows(dx, (kh, kw), (sh, sw), (ho, wo))):
        if overlap:
            dx_ij += dy * (arg == k)
        else:
            xp.multiply(dy, arg == k, out=dx_ij)
    return dx, {}


def tangent_forward(x_t, cache):
    """``(y_t, None)``: each window passes on the tangent of its (first) argmax."""
    arg, x_shape, kernel, stride = cache
    xp = backend.array_module(x_t)
    out_size = arg.shape[1:3]
    y_t = xp.zeros(arg.shape, dtype=x_t.dtype)
    for k, x_t_ij in enumerate(_windows(x_t, kernel, stride, out_size)):
        y_t += x_t_ij * (arg == k)
    return y_t, None


class MaxPool2d(Layer):
    """``MaxPool2d(kernel_size=2, stride=None)``: stride defaults to the kernel size; no padding."""

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", "MaxPool2d")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", "MaxPool2d")

    def describe(self):
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride})"

    def _apply(self, params, x, mode):
        check_input(self, "x", x, ndims=(4,))
        if x.shape[1] < self.kernel_size[0] or x.shape[2] < self.kernel_size[1]:
            raise LayerError(f"{self.describe()}: kernel {self.kernel_size} is larger than the input's "
                             f"{tuple(x.shape[1:3])} rows and columns (x of shape {tuple(x.shape)})")
        return forward(x, self.kernel_size, self.stride)

    def _backward(self, dy, cache):
        return backward(dy, cache)

    def _tangent_forward(self, x_t, params_t, cache):
        return tangent_forward(x_t, cache)

    def _tangent_backward(self, dy, dy_t, cache, tangent_cache):
        return backward(dy_t, cache)
