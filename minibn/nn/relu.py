"""ReLU.

Forward:   y = max(x, 0)
Backward:  dx = dy * [x > 0]     (the subgradient 0 is taken at x = 0)
"""

from minibn.nn.layer import Layer, check_input


def forward(x):
    mask = x > 0
    return x * mask, mask


def backward(dy, mask):
    return dy * mask, {}


class ReLU(Layer):
    def _forward(self, x, mode):
        check_input(self, "x", x)
        return forward(x)

    def _backward(self, dy, mask):
        return backward(dy, mask)
