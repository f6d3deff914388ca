"""Flatten every axis but the batch axis.

Forward:   y = x.reshape(N, -1)        (NHWC order: channels vary fastest)
Backward:  dx = dy.reshape(x.shape)
"""

from minibn.nn.layer import Layer, check_input


def forward(x):
    return x.reshape(x.shape[0], -1), x.shape


def backward(dy, shape):
    return dy.reshape(shape), {}


class Flatten(Layer):
    def _forward(self, x, mode):
        check_input(self, "x", x, ndims=(2, 3, 4, 5))
        return forward(x)

    def _backward(self, dy, shape):
        return backward(dy, shape)
