"""ReLU.

Forward:   y = max(x, 0)
Backward:  dx = dy * [x > 0]     (the subgradient 0 is taken at x = 0)

Second order, the mask [x > 0] held fixed (piecewise linear: the tangent of the piece x is in):

    y_t = x_t * [x > 0]        dx_t = dy_t * [x > 0]
"""

from minibn.nn.layer import Layer, check_input


def forward(x):
    mask = x > 0
    return x * mask, mask


def backward(dy, mask):
    return dy * mask, {}


class ReLU(Layer):
    def _apply(self, params, x, mode):
        check_input(self, "x", x)
        return forward(x)

    def _backward(self, dy, mask):
        return backward(dy, mask)

    def _tangent_forward(self, x_t, params_t, mask):
        return x_t * mask, None

    def _tangent_backward(self, dy, dy_t, mask, tangent_cache):
        return backward(dy_t, mask)
