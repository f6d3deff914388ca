import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn
from minibn.nn import rmsnorm
from minibn.testing import check_layer_property, layer_inputs

FAST = settings(max_examples=15, deadline=None)


def reference(x, gamma, beta, eps):
    """Per sample over all of its values (H, W and C for a 4-D input), in plain Python."""
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        values = x[n].ravel().tolist()
        ms = sum(v * v for v in values) / len(values)
        out[n] = x[n] / math.sqrt(ms + eps)
    return out * gamma + beta


def per_sample_inputs():
    """float64 (N, C) or (N, H, W, C) inputs with at least 2 values per sample (a batch of one included)."""
    return layer_inputs(ndim=(2, 4), max_channels=4, min_pooled=1).filter(lambda x: x[0].size >= 2)


@FAST
@given(per_sample_inputs(), st.integers(0, 2**32 - 1), st.sampled_from([1e-5, 0.0]))
def test_forward_matches_reference(x, seed, eps):
    layer = nn.RMSNorm(x.shape[-1], eps=eps, dtype="float64")
    rng = np.random.default_rng(seed)
    layer.params["gamma"][:] = rng.normal(size=x.shape[-1])
    layer.params["beta"][:] = rng.normal(size=x.shape[-1])
    y = layer.forward(x, "train")
    np.testing.assert_allclose(y, reference(x, layer.params["gamma"], layer.params["beta"], eps), rtol=1e-9, atol=1e-9)


def test_backward_matches_gradcheck():
    check_layer_property(nn.RMSNorm, ndim=(2, 4), modes=("train", "probe", "eval"), max_examples=25,
                         inputs=per_sample_inputs())


def test_functional_core_is_the_layer():
    rng = np.random.default_rng(1)
    x, dy, gamma, beta = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4)), rng.normal(size=4), rng.normal(size=4)
    y, cache = rmsnorm.forward(x, gamma, beta, 1e-5)
    dx, grads = rmsnorm.backward(dy, cache)
    layer = nn.RMSNorm(4, dtype="float64")
    layer.params["gamma"][:], layer.params["beta"][:] = gamma, beta
    np.testing.assert_array_equal(layer.forward(x, "probe"), y)
    np.testing.assert_array_equal(layer.backward(dy), dx)
    for k in grads:
        np.testing.assert_array_equal(layer.grads[k], grads[k])


def test_backward_is_inv_rms_times_the_projection_per_sample():
    """gamma = 1, eps = 0: dx_n = inv_rms_n P_n dy_n with P = I - x_hat x_hat^T/m, a projection of rank m - 1
    that keeps the all-ones direction (docs/layers/rmsnorm.md)."""
    rng = np.random.default_rng(2)
    x, dy = rng.normal(size=(3, 5)) * 2.0 + 1.0, rng.normal(size=(3, 5))
    _, cache = rmsnorm.forward(x, np.ones(5), np.zeros(5), 0.0)
    dx, _ = rmsnorm.backward(dy, cache)
    for n in range(3):
        rms = math.sqrt((x[n] ** 2).mean())
        x_hat = x[n] / rms
        P = np.eye(5) - np.outer(x_hat, x_hat) / 5
        np.testing.assert_allclose(P @ P, P, atol=1e-12)
        assert np.linalg.matrix_rank(P) == 4 and np.linalg.norm(P @ np.ones(5)) > 0.1
        np.testing.assert_allclose(dx[n], P @ dy[n] / rms, rtol=1e-12, atol=1e-12)


def test_no_running_statistics_modes_are_one_map_and_samples_do_not_mix():
    x = np.random.default_rng(0).normal(size=(4, 2, 3, 6))
    layer = nn.RMSNorm(6, dtype="float64")
    y = layer.forward(x, "train")
    assert layer.state() == {} and layer.buffers == ()
    np.testing.assert_array_equal(layer.forward(x, "eval"), y)
    np.testing.assert_array_equal(layer.forward(x, "probe"), y)
    np.testing.assert_allclose(layer.forward(x[1:2], "train"), y[1:2], rtol=1e-13, atol=1e-13)  # batch of one


def test_no_centring_a_shift_passes_through():
    """Unlike LayerNorm, the output's per-sample mean follows the input's (gamma = 1, beta = 0)."""
    x = np.random.default_rng(4).normal(size=(3, 8)) + 2.0
    y = nn.RMSNorm(8, dtype="float64").forward(x, "probe")
    assert (y.mean(axis=1) > 0.5).all()
    np.testing.assert_allclose((y * y).mean(axis=1), 1.0, rtol=1e-4)   # ms / (ms + eps)


def test_bad_inputs_raise_errors_naming_layer_argument_and_shapes():
    layer = nn.RMSNorm(4)
    with pytest.raises(nn.LayerError, match=r"RMSNorm\(4, eps=1e-05\): x has 5 features/channels.*\(3, 5\).*expected 4"):
        layer.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(nn.LayerError, match=r"RMSNorm\(1.*at least 2 values per sample.*\(3, 1\)"):
        nn.RMSNorm(1).forward(np.zeros((3, 1), np.float32))
    with pytest.raises(nn.LayerError, match="x has dtype float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"RMSNorm: num_features must be a positive integer, got 0"):
        nn.RMSNorm(0)
    with pytest.raises(nn.LayerError, match=r"RMSNorm\(4.*backward called before forward"):
        nn.RMSNorm(4).backward(np.zeros((3, 4), np.float32))


def test_float32_stays_float32():
    layer = nn.RMSNorm(4)
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == layer.backward(np.ones_like(y)).dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())


def test_same_results_on_every_backend(xp):
    rng = np.random.default_rng(5)
    x, dy = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
    results = []
    for name in ("numpy", backend.name_of(xp)):
        layer = nn.RMSNorm(4, dtype="float64").to(name)
        y = layer.forward(backend.to_device(x, name), "train")
        dx = layer.backward(backend.to_device(dy, name))
        results.append([backend.to_host(a) for a in (y, dx, layer.grads["gamma"], layer.grads["beta"])])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
