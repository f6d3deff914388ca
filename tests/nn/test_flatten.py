import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn
from minibn.gradcheck import check_layer


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=2, max_size=4), st.integers(0, 2**32 - 1))
def test_forward_keeps_nhwc_order_and_backward_restores_shape(shape, seed):
    x = np.random.default_rng(seed).normal(size=shape)
    layer = nn.Flatten()
    y = layer.forward(x)
    # reference: for each sample, channels vary fastest (channels-last order)
    expected = np.array([[x[(n,) + idx] for idx in np.ndindex(*shape[1:])] for n in range(shape[0])])
    np.testing.assert_array_equal(y, expected)
    check_layer(layer, x)
    assert layer.backward(y).shape == x.shape


def test_bad_inputs():
    layer = nn.Flatten()
    with pytest.raises(nn.LayerError, match=r"Flatten: x must be 2-D or 3-D or 4-D or 5-D, got shape \(4,\)"):
        layer.forward(np.zeros(4))
    layer.forward(np.zeros((2, 3, 4)))
    with pytest.raises(nn.LayerError, match=r"Flatten: backward got dy of shape \(2, 3, 4\).*\(2, 12\)"):
        layer.backward(np.zeros((2, 3, 4)))


def test_on_every_backend(xp):
    x = backend.to_device(np.arange(24.0).reshape(2, 2, 3, 2), xp)
    layer = nn.Flatten()
    y = layer.forward(x)
    assert y.shape == (2, 12) and backend.to_host(layer.backward(y)).shape == (2, 2, 3, 2)
