import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn
from minibn.gradcheck import check_layer


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=2, max_size=4), st.integers(0, 2**32 - 1))
def test_forward_and_backward_off_the_kink(shape, seed):
    x = np.random.default_rng(seed).normal(size=shape)
    x = np.where(x >= 0, 1.0, -1.0) * (np.abs(x) + 0.01)      # keep |x| >= 0.01, away from the kink at 0
    layer = nn.ReLU()
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.reshape([v if v > 0 else 0.0 for v in x.ravel()], shape))
    check_layer(layer, x)
    assert layer.params == {} and layer.grads == {}


def test_subgradient_zero_at_zero_and_kink_declared():
    layer = nn.ReLU()
    x = np.array([[0.0, 1.0, -1.0]])
    layer.forward(x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), [[0.0, 1.0, 0.0]])
    report = check_layer(layer, x, raise_on_fail=False)
    assert report.kinks


def test_dtype_follows_input():
    for dtype in (np.float32, np.float64):
        layer = nn.ReLU()
        y = layer.forward(np.array([[-1.0, 2.0]], dtype))
        assert y.dtype == layer.backward(np.ones_like(y)).dtype == dtype


def test_bad_inputs():
    layer = nn.ReLU()
    with pytest.raises(nn.LayerError, match="ReLU: x must be a floating-point array, got dtype int64"):
        layer.forward(np.array([1, 2]))
    with pytest.raises(nn.LayerError, match="ReLU: backward called before forward"):
        layer.backward(np.zeros(2))
    layer.forward(np.zeros((2, 3)))
    with pytest.raises(nn.LayerError, match=r"ReLU: backward got dy of shape \(3, 2\).*\(2, 3\)"):
        layer.backward(np.zeros((3, 2)))
    with pytest.raises(nn.LayerError, match="ReLU: dy has dtype float32 but the forward output's values are float64"):
        layer.backward(np.zeros((2, 3), np.float32))


def test_same_results_on_every_backend(xp):
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 2))
    layer = nn.ReLU()
    y = layer.forward(backend.to_device(x, xp))
    dx = layer.backward(backend.to_device(x, xp))
    np.testing.assert_array_equal(backend.to_host(y), np.maximum(x, 0))
    np.testing.assert_array_equal(backend.to_host(dx), np.where(x > 0, x, 0))
