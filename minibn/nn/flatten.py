"""Flatten every axis but the batch axis.

Forward:   y = x.reshape(N, -1)        (NHWC order: channels vary fastest)
Backward:  dx = dy.reshape(x.shape)
Second order (linear):  y_t = x_t.reshape(N, -1),  dx_t = dy_t.reshape(x.shape)
"""

from minibn.nn.layer import Layer, check_input


def forward(x):
    return x.reshape(x.shape[0], -1), x.shape


def backward(dy, shape):
    return dy.reshape(shape), {}


class Flatten(Layer):
    def _apply(self, params, x, mode):
        check_input(self, "x", x, ndims=(2, 3, 4, 5))
        return forward(x)

    def _backward(self, dy, shape):
        return backward(dy, shape)

    def _tangent_forward(self, x_t, params_t, shape):
        return forward(x_t)[0], None

    def _tangent_backward(self, dy, dy_t, shape, tangent_cache):
        return backward(dy_t, shape)
