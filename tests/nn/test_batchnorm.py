import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn
from minibn.nn import batchnorm, normalization
from minibn.testing import check_layer_property, layer_inputs

FAST = settings(max_examples=15, deadline=None)


def inputs(max_channels=4):
    """A float64 (N, C) or (N, H, W, C) array with at least 2 values per channel."""
    return layer_inputs(ndim=(2, 4), max_channels=max_channels)


def reference(x, gamma, beta, eps):
    """Per channel, in plain float64 Python loops over the pooled values."""
    out = np.empty_like(x)
    for j in range(x.shape[-1]):
        values = x[..., j].ravel().tolist()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        out[..., j] = gamma[j] * (x[..., j] - mean) / math.sqrt(var + eps) + beta[j]
    return out


def random_bn(channels, seed=0, **kw):
    layer = nn.BatchNorm(channels, dtype="float64", **kw)
    rng = np.random.default_rng(seed)
    layer.params["gamma"][:] = rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels)
    layer.params["beta"][:] = rng.normal(size=channels)
    return layer


@FAST
@given(inputs())
def test_forward_matches_reference(x):
    layer = random_bn(x.shape[-1])
    y = layer.forward(x, "probe")
    np.testing.assert_allclose(y, reference(x, layer.params["gamma"], layer.params["beta"], 1e-5), rtol=1e-9, atol=1e-9)


def test_backward_matches_gradcheck():
    check_layer_property(nn.BatchNorm, ndim=(2, 4), modes=("train", "probe", "eval"), max_examples=15)


@FAST
@given(inputs(), st.integers(0, 2**32 - 1))
def test_staged_and_simplified_backward_agree(x, seed):
    gamma = np.random.default_rng(seed).normal(size=x.shape[-1])
    beta = np.zeros(x.shape[-1])
    _, cache = batchnorm.forward(x, gamma, beta, 1e-5)
    dy = np.random.default_rng(seed + 1).normal(size=x.shape)
    dx_simple, g_simple = batchnorm.backward(dy, cache)
    dx_staged, g_staged = batchnorm.backward_staged(dy, cache)
    np.testing.assert_allclose(dx_simple, dx_staged, rtol=1e-8, atol=1e-10)
    for k in ("gamma", "beta"):
        np.testing.assert_allclose(g_simple[k], g_staged[k], rtol=1e-12, atol=1e-12)


@FAST
@given(inputs(), st.integers(0, 2**32 - 1), st.sampled_from([1e-5, 0.0]))
def test_inplace_pair_equals_the_plain_pair(x, seed, eps):
    """forward_inplace/backward_inplace (what the layer trains with) compute forward/backward."""
    rng = np.random.default_rng(seed)
    gamma, beta = rng.normal(size=x.shape[-1]), rng.normal(size=x.shape[-1])
    dy = rng.normal(size=x.shape)
    x_before = x.copy()
    y_plain, cache_plain = batchnorm.forward(x, gamma, beta, eps)
    y_fast, cache_fast = batchnorm.forward_inplace(x, gamma, beta, eps)
    np.testing.assert_array_equal(x, x_before)           # the input is never written
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-12, atol=1e-12)
    for field in batchnorm.Cache._fields:
        np.testing.assert_allclose(getattr(cache_fast, field), getattr(cache_plain, field), rtol=1e-12, atol=1e-12)
    dy_before = dy.copy()
    dx_plain, g_plain = batchnorm.backward(dy, cache_plain)
    dx_fast, g_fast = batchnorm.backward_inplace(dy, cache_fast)
    np.testing.assert_array_equal(dy, dy_before)
    scale = np.abs(dx_plain).max() + np.abs(gamma * cache_plain.inv_std).max() * np.abs(dy).max()
    np.testing.assert_allclose(dx_fast, dx_plain, rtol=0, atol=1e-12 * scale)
    for k in ("gamma", "beta"):
        np.testing.assert_allclose(g_fast[k], g_plain[k], rtol=1e-12, atol=1e-12)


def test_the_layer_trains_with_the_inplace_pair_and_evaluates_with_the_eval_pair():
    rng = np.random.default_rng(4)
    layer = random_bn(3)
    x, dy = rng.normal(size=(5, 2, 2, 3)), rng.normal(size=(5, 2, 2, 3))
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    for mode in ("train", "probe"):
        y_ref, cache = batchnorm.forward_inplace(x, gamma, beta, layer.eps)
        np.testing.assert_array_equal(layer.forward(x, mode), y_ref)
        np.testing.assert_array_equal(layer.backward(dy), batchnorm.backward_inplace(dy, cache)[0])
    y_ref, cache = batchnorm.forward_eval(x, gamma, beta, layer.running_mean, layer.running_var, layer.eps)
    np.testing.assert_array_equal(layer.forward(x, "eval"), y_ref)
    np.testing.assert_array_equal(layer.backward(dy), batchnorm.backward_eval(dy, cache)[0])


@FAST
@given(inputs(), st.integers(0, 2**32 - 1))
def test_eval_pair_is_the_affine_map_of_the_running_statistics(x, seed):
    rng = np.random.default_rng(seed)
    C = x.shape[-1]
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    running_mean, running_var = rng.normal(size=C), rng.uniform(0.1, 3.0, C)
    y, cache = batchnorm.forward_eval(x, gamma, beta, running_mean, running_var, 1e-5)
    inv_std = 1.0 / np.sqrt(running_var + 1e-5)
    np.testing.assert_allclose(y, gamma * (x - running_mean) * inv_std + beta, rtol=1e-12, atol=1e-12)
    dy = rng.normal(size=x.shape)
    dx, grads = batchnorm.backward_eval(dy, cache)
    np.testing.assert_allclose(dx, dy * gamma * inv_std, rtol=1e-12, atol=1e-15)
    axes = tuple(range(x.ndim - 1))
    np.testing.assert_allclose(grads["beta"], dy.sum(axis=axes), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["gamma"], (dy * (x - running_mean) * inv_std).sum(axis=axes), rtol=1e-10, atol=1e-12)


def test_staged_backward_refuses_eval_cache():
    _, cache = batchnorm.forward_eval(np.ones((3, 2)), np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), 1e-5)
    with pytest.raises(nn.LayerError, match="backward_staged"):
        batchnorm.backward_staged(np.ones((3, 2)), cache)


def test_backward_is_the_projection_gamma_inv_std_P():
    """dx = gamma * inv_std * P dy with P = I - 11^T/m - x_hat x_hat^T/m (eps = 0), P a symmetric projection."""
    rng = np.random.default_rng(3)
    m, gamma = 7, np.array([1.7])
    x, dy = rng.normal(size=(m, 1)), rng.normal(size=(m, 1))
    _, cache = batchnorm.forward(x, gamma, np.zeros(1), eps=0.0)
    dx, _ = batchnorm.backward(dy, cache)
    mean, var = cache.mu, cache.var
    x_hat = (x[:, 0] - mean[0]) / math.sqrt(var[0])
    ones = np.ones(m)
    P = np.eye(m) - np.outer(ones, ones) / m - np.outer(x_hat, x_hat) / m
    np.testing.assert_allclose(P, P.T)
    np.testing.assert_allclose(P @ P, P, atol=1e-12)
    np.testing.assert_allclose(dx[:, 0], gamma[0] / math.sqrt(var[0]) * P @ dy[:, 0], rtol=1e-10, atol=1e-12)


def test_running_statistics_update_formula():
    rng = np.random.default_rng(0)
    layer = nn.BatchNorm(3, momentum=0.1, dtype="float64")
    x1, x2 = rng.normal(size=(5, 3)) + 2.0, rng.normal(size=(2, 2, 2, 3)) * 3.0
    layer.forward(x1, "train")
    mean1, var1 = x1.mean(0), x1.var(0, ddof=1)
    np.testing.assert_allclose(layer.running_mean, 0.1 * mean1, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.9 * 1.0 + 0.1 * var1, rtol=1e-12)
    layer.forward(x2, "train")
    flat = x2.reshape(-1, 3)
    np.testing.assert_allclose(layer.running_mean, 0.9 * 0.1 * mean1 + 0.1 * flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.9 * (0.9 + 0.1 * var1) + 0.1 * flat.var(0, ddof=1), rtol=1e-12)


def test_eval_mode_uses_running_statistics():
    layer = random_bn(2)
    layer.running_mean = np.array([1.0, -2.0])
    layer.running_var = np.array([4.0, 0.25])
    x = np.random.default_rng(1).normal(size=(6, 2))
    g, b = layer.params["gamma"], layer.params["beta"]
    expected = g * (x - layer.running_mean) / np.sqrt(layer.running_var + 1e-5) + b
    np.testing.assert_allclose(layer.forward(x, "eval"), expected, rtol=1e-12)
    # each row is normalized on its own: a batch of one works in eval mode
    np.testing.assert_allclose(layer.forward(x[:1], "eval"), expected[:1], rtol=1e-12)
    np.testing.assert_array_equal(layer.running_mean, [1.0, -2.0])


def test_probe_mode_uses_batch_statistics_and_changes_no_state():
    layer = random_bn(3)
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 3))
    layer.forward(x + 1.0, "train")
    before = layer.state()
    y_probe = layer.forward(x, "probe")
    after = layer.state()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    np.testing.assert_allclose(y_probe, reference(x, layer.params["gamma"], layer.params["beta"], 1e-5), rtol=1e-9)


def test_state_is_a_host_copy_and_round_trips():
    layer = nn.BatchNorm(2, dtype="float64")
    layer.forward(np.arange(8.0).reshape(4, 2), "train")
    saved = layer.state()
    kept = {k: v.copy() for k, v in saved.items()}
    layer.forward(np.ones((4, 2)) * 7.0, "train")
    assert not np.array_equal(layer.running_mean, saved["running_mean"])
    layer.load_state(saved)
    np.testing.assert_array_equal(layer.running_mean, saved["running_mean"])
    layer.forward(np.ones((4, 2)), "train")     # training afterwards must not write into `saved`
    for k in kept:
        np.testing.assert_array_equal(saved[k], kept[k])


def test_load_state_errors_name_layer_and_key():
    layer = nn.BatchNorm(2)
    with pytest.raises(nn.LayerError, match=r"BatchNorm\(2.*missing 'running_var'"):
        layer.load_state({"running_mean": np.zeros(2)})
    with pytest.raises(nn.LayerError, match=r"'running_var' has shape \(3,\), expected \(2,\)"):
        layer.load_state({"running_mean": np.zeros(2), "running_var": np.ones(3)})
    with pytest.raises(nn.LayerError, match="unexpected state keys"):
        layer.load_state({"running_mean": np.zeros(2), "running_var": np.ones(2), "extra": 1})


def test_float32_in_float32_out_no_upcast():
    layer = nn.BatchNorm(3)
    x = np.random.default_rng(0).normal(size=(4, 2, 2, 3)).astype(np.float32)
    y = layer.forward(x, "train")
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    assert layer.running_mean.dtype == layer.running_var.dtype == np.float32
    y_eval = layer.forward(x, "eval")
    assert y_eval.dtype == layer.backward(y_eval).dtype == np.float32


def test_bad_inputs_raise_errors_naming_layer_argument_and_shapes():
    layer = nn.BatchNorm(4)
    with pytest.raises(nn.LayerError, match=r"BatchNorm\(4.*: x must be 2-D or 4-D, got shape \(2, 3, 4\)"):
        layer.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(nn.LayerError, match=r"x has 5 features/channels.*\(3, 5\).*expected 4"):
        layer.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(nn.LayerError, match="x has dtype float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((3, 4)))
    with pytest.raises(nn.LayerError, match=r"at least 2 values per channel.*\(1, 4\)"):
        layer.forward(np.zeros((1, 4), np.float32), "train")
    with pytest.raises(nn.LayerError, match=r"BatchNorm\(4.*mode must be one of"):
        layer.forward(np.zeros((3, 4), np.float32), "test")
    with pytest.raises(nn.LayerError, match=r"BatchNorm\(4.*backward called before forward"):
        nn.BatchNorm(4).backward(np.zeros((3, 4), np.float32))
    layer.forward(np.zeros((3, 4), np.float32))
    with pytest.raises(nn.LayerError, match=r"dy of shape \(3, 3\).*forward produced shape \(3, 4\)"):
        layer.backward(np.zeros((3, 3), np.float32))
    with pytest.raises(nn.LayerError, match="dy has dtype float64 but the forward output's values are float32"):
        layer.backward(np.zeros((3, 4)))
    for kwargs, text in (({"num_features": 0}, "num_features"), ({"num_features": 2, "eps": -1}, "eps"),
                         ({"num_features": 2, "momentum": 1.5}, "momentum")):
        with pytest.raises(ValueError, match=f"BatchNorm: {text}"):
            nn.BatchNorm(**kwargs)


def test_same_results_on_every_backend(xp):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2, 2, 4))
    dy = rng.normal(size=x.shape)
    results = []
    for name in ("numpy", backend.name_of(xp)):
        layer = random_bn(4).to(name)
        y = layer.forward(backend.to_device(x, name), "train")
        dx = layer.backward(backend.to_device(dy, name))
        results.append([backend.to_host(a) for a in (y, dx, layer.grads["gamma"], layer.running_var)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# --- without gamma and beta (affine=False): the theory's constant case ----------------------------

def test_without_affine_has_no_parameters_and_is_the_affine_layer_at_gamma_1_beta_0():
    x = np.random.default_rng(7).normal(size=(5, 2, 2, 3)) * 2.0 + 1.0
    dy = np.random.default_rng(8).normal(size=x.shape)
    plain, affine = nn.BatchNorm(3, affine=False, dtype="float64"), nn.BatchNorm(3, dtype="float64")
    assert plain.params == {} and "affine=False" in plain.describe()
    for mode in ("train", "eval", "probe"):
        np.testing.assert_array_equal(plain.forward(x, mode), affine.forward(x, mode))
        np.testing.assert_array_equal(plain.backward(dy), affine.backward(dy))
        assert plain.grads == {}
    np.testing.assert_array_equal(plain.running_var, affine.running_var)
    assert normalization.get("batchnorm_noaffine").make(3, rng=None, dtype="float32").affine is False


def test_without_affine_backward_matches_gradcheck():
    check_layer_property(lambda c: nn.BatchNorm(c, affine=False), ndim=(2, 4), modes=("train", "probe", "eval"),
                         max_examples=10)


def test_without_affine_keeps_its_dtype():
    layer = nn.BatchNorm(2, affine=False)
    with pytest.raises(nn.LayerError, match=r"BatchNorm\(2, .*affine=False\): x has dtype float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((3, 2)))
    layer.astype("float64")
    assert layer.forward(np.ones((3, 2))).dtype == np.float64
