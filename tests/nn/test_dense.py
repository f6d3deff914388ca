import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn
from minibn.gradcheck import check_layer

FAST = settings(max_examples=15, deadline=None)


def reference(x, W, b):
    """y[n, o] = sum_i x[n, i] W[i, o] + b[o], one entry at a time."""
    n, k = x.shape
    out = np.zeros((n, W.shape[1]))
    for r in range(n):
        for o in range(W.shape[1]):
            out[r, o] = sum(x[r, i] * W[i, o] for i in range(k)) + (b[o] if b is not None else 0.0)
    return out


@FAST
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.integers(0, 2**32 - 1))
def test_forward_and_backward(n, fan_in, fan_out, bias, seed):
    rng = np.random.default_rng(seed)
    layer = nn.Dense(fan_in, fan_out, bias=bias, rng=rng, dtype="float64")
    if bias:
        layer.params["b"][:] = rng.normal(size=fan_out)
    x = rng.normal(size=(n, fan_in))
    np.testing.assert_allclose(layer.forward(x), reference(x, layer.params["W"], layer.params.get("b")), rtol=1e-12, atol=1e-12)
    assert sorted(layer.params) == (["W", "b"] if bias else ["W"])
    check_layer(layer, x)
    assert sorted(layer.grads) == sorted(layer.params)


def test_float32_stays_float32():
    layer = nn.Dense(3, 2, rng=0)
    x = np.ones((4, 3), np.float32)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == layer.grads["W"].dtype == layer.grads["b"].dtype == np.float32


def test_parameters_start_glorot_and_zero_and_follow_the_seed():
    a, b = nn.Dense(30, 20, rng=3), nn.Dense(30, 20, rng=3)
    np.testing.assert_array_equal(a.params["W"], b.params["W"])
    assert np.abs(a.params["W"]).max() <= np.sqrt(6 / 50) and np.all(a.params["b"] == 0)
    assert nn.Dense(2, 2, init="glorot_normal", rng=0).params["W"].shape == (2, 2)
    assert a.starts_block


def test_bad_inputs_raise_errors_naming_layer_argument_and_shapes():
    layer = nn.Dense(3, 2, rng=0)
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 2, bias=True\): x must be 2-D, got shape \(2, 2, 3\)"):
        layer.forward(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 2.*x has 4 features/channels.*\(5, 4\).*expected 3"):
        layer.forward(np.zeros((5, 4), np.float32))
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 2.*x has dtype float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((5, 3)))
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 2.*x must be a floating-point array, got dtype int64"):
        layer.forward(np.zeros((5, 3), np.int64))
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 2.*x must be an array, got list"):
        layer.forward([[0.0, 0.0, 0.0]])
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 2.*backward called before forward"):
        layer.backward(np.zeros((5, 2), np.float32))
    layer.forward(np.zeros((5, 3), np.float32))
    with pytest.raises(nn.LayerError, match=r"Dense\(3, 2.*dy of shape \(5, 3\).*forward produced shape \(5, 2\)"):
        layer.backward(np.zeros((5, 3), np.float32))
    for args in ((0, 2), (2, 1.5)):
        with pytest.raises(ValueError, match="Dense: (in|out)_features must be a positive integer"):
            nn.Dense(*args)
    with pytest.raises(ValueError, match="init: unknown initializer 'he'"):
        nn.Dense(2, 2, init="he")


def test_same_results_on_every_backend(xp):
    rng = np.random.default_rng(0)
    x, dy = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    out = []
    for name in ("numpy", backend.name_of(xp)):
        layer = nn.Dense(3, 2, rng=1, dtype="float64").to(name)
        y = layer.forward(backend.to_device(x, name))
        dx = layer.backward(backend.to_device(dy, name))
        out.append([backend.to_host(a) for a in (y, dx, layer.grads["W"], layer.grads["b"])])
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
