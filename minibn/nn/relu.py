"""ReLU.

Forward:   y = max(x, 0)
Backward:  dx = dy * [x > 0]     (the subgradient 0 is taken at x = 0)

Second order, the mask [x > 0] held fixed (piecewise linear: the tangent of the piece x is in):

    y_t = x_t * [x > 0]        dx_t = dy_t * [x > 0]

:func:`forward` and :func:`backward` are the equations; the layer runs :func:`forward_threaded`
and :func:`backward_threaded`, the same operations over blocks of the batch on the thread pool
of :mod:`minibn.parallel` (bit for bit the same result: each entry is computed alone).
"""

from minibn import backend, parallel
from minibn.nn.layer import Layer, check_input


def forward(x):
    """``(y, mask)`` with mask = [x > 0] and y = x * mask."""
    mask = x > 0
    return x * mask, mask


def backward(dy, mask):
    """``(dx, {})`` with dx = dy * mask."""
    return dy * mask, {}


def forward_threaded(x):
    """:func:`forward`, its two passes run block by block on the thread pool."""
    xp = backend.array_module(x)
    mask, y = xp.empty(x.shape, dtype=bool), xp.empty_like(x)

    def kernel(rows):
        xp.greater(x[rows], 0, out=mask[rows])
        xp.multiply(x[rows], mask[rows], out=y[rows])

    parallel.over_rows(kernel, x)
    return y, mask


def backward_threaded(dy, mask):
    """:func:`backward` on the thread pool."""
    xp = backend.array_module(dy)
    dx = xp.empty_like(dy)
    parallel.over_rows(lambda rows: xp.multiply(dy[rows], mask[rows], out=dx[rows]), dy)
    return dx, {}


class ReLU(Layer):
    def _forward(self, x, mode):
        check_input(self, "x", x)
        return forward_threaded(x)

    def _backward(self, dy, mask):
        return backward_threaded(dy, mask)

    def _tangent_forward(self, x_t, params_t, mask):
        return x_t * mask, None

    def _tangent_backward(self, dy, dy_t, mask, tangent_cache):
        return backward_threaded(dy_t, mask)
