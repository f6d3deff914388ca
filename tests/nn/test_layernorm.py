import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import nn, theory
from minibn.nn import layernorm, normalization
from minibn.testing import check_layer_property, layer_inputs

FAST = settings(max_examples=15, deadline=None)


def reference(x, gamma, beta, eps):
    """Per sample over all of its values (H, W and C for a 4-D input), in plain Python."""
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        values = x[n].ravel().tolist()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        out[n] = (x[n] - mean) / math.sqrt(var + eps)
    return out * gamma + beta


@FAST
@given(layer_inputs(ndim=(2, 4), channels=3), st.integers(0, 2**32 - 1))
def test_forward_matches_reference_and_groupnorm_with_one_group(x, seed):
    layer = nn.LayerNorm(3, dtype="float64")
    rng = np.random.default_rng(seed)
    layer.params["gamma"][:] = rng.normal(size=3)
    layer.params["beta"][:] = rng.normal(size=3)
    y = layer.forward(x, "train")
    np.testing.assert_allclose(y, reference(x, layer.params["gamma"], layer.params["beta"], 1e-5), rtol=1e-9, atol=1e-9)
    gn = nn.GroupNorm(1, 3, dtype="float64")
    gn.params = {k: v.copy() for k, v in layer.params.items()}
    np.testing.assert_array_equal(gn.forward(x), y)


def test_backward_matches_gradcheck():
    check_layer_property(nn.LayerNorm, ndim=(2, 4), modes=("train", "probe", "eval"), max_examples=25,
                         inputs=layer_inputs(ndim=(2, 4), max_channels=4, min_pooled=1).filter(lambda x: x[0].size >= 2))


def test_functional_core_is_the_layer():
    rng = np.random.default_rng(1)
    x, dy, gamma, beta = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4)), rng.normal(size=4), rng.normal(size=4)
    y, cache = layernorm.forward(x, gamma, beta, 1e-5)
    dx, grads = layernorm.backward(dy, cache)
    layer = nn.LayerNorm(4, dtype="float64")
    layer.params["gamma"][:], layer.params["beta"][:] = gamma, beta
    np.testing.assert_array_equal(layer.forward(x, "probe"), y)
    np.testing.assert_array_equal(layer.backward(dy), dx)
    for k in grads:
        np.testing.assert_array_equal(layer.grads[k], grads[k])


def test_backward_is_inv_std_times_the_projection_per_sample():
    """gamma = 1: dx_n = inv_std_n P_n dy_n with P = I - 11^T/m - x_hat x_hat^T/m (docs/layers/layernorm.md)."""
    rng = np.random.default_rng(2)
    x, dy = rng.normal(size=(3, 5)) * 2.0 + 1.0, rng.normal(size=(3, 5))
    _, cache = layernorm.forward(x, np.ones(5), np.zeros(5), 0.0)
    dx, _ = layernorm.backward(dy, cache)
    for n in range(3):
        x_hat = (x[n] - x[n].mean()) / x[n].std()
        P = np.eye(5) - np.ones((5, 5)) / 5 - np.outer(x_hat, x_hat) / 5
        np.testing.assert_allclose(dx[n], P @ dy[n] / x[n].std(), rtol=1e-12, atol=1e-12)


def test_no_running_statistics_modes_are_one_map():
    x = np.random.default_rng(0).normal(size=(4, 6))
    layer = nn.LayerNorm(6, dtype="float64")
    y = layer.forward(x, "train")
    assert layer.state() == {} and layer.buffers == ()
    np.testing.assert_array_equal(layer.forward(x, "eval"), y)
    np.testing.assert_array_equal(layer.forward(x, "probe"), y)
    np.testing.assert_allclose(layer.forward(x[:1], "train"), y[:1], rtol=1e-13, atol=1e-13)  # batch of one


def test_registered():
    entry = normalization.get("layernorm")
    assert entry.label == "LayerNorm" and isinstance(entry.make(8, rng=None, dtype="float32"), nn.LayerNorm)


def test_bad_inputs_raise_errors_naming_layer_argument_and_shapes():
    layer = nn.LayerNorm(4)
    with pytest.raises(nn.LayerError, match=r"LayerNorm\(4, eps=1e-05\): x has 5 features/channels.*\(3, 5\).*expected 4"):
        layer.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(nn.LayerError, match=r"LayerNorm\(1.*at least 2 values per sample.*\(3, 1\)"):
        nn.LayerNorm(1).forward(np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match=r"LayerNorm: num_features must be a positive integer, got 0"):
        nn.LayerNorm(0)
    with pytest.raises(nn.LayerError, match=r"LayerNorm\(4.*backward called before forward"):
        nn.LayerNorm(4).backward(np.zeros((3, 4), np.float32))


def test_scale_invariance_per_sample_and_projection_by_the_generic_checks():
    """The theory's generic checks (minibn.theory) on the layer: eps = 0 makes LayerNorm invariant to a
    positive scale of each sample; its Jacobian is, per sample, inv_std P, and samples do not mix."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 2, 2, 3)) * 3.0 + 1.0
    layer = nn.LayerNorm(3, eps=0.0, dtype="float64")
    inv = theory.normalizer_scale_invariance(layer, x, scales=(2.0, rng.uniform(0.1, 10.0, size=(4, 1, 1, 1))))
    assert inv["max_output_error"] < 1e-13 and inv["max_grad_error"] < 1e-12
    not_per_channel = theory.normalizer_scale_invariance(layer, x, scales=(rng.uniform(0.1, 10.0, size=3),))
    assert not_per_channel["max_output_error"] > 1e-3  # a per-channel scale changes a sample's statistics
    proj = theory.normalizer_projection(layer, x[:3, :1, :, :])   # 3 samples of m = 1*2*3 values
    assert proj["m"] == 6 and proj["cross_column"] < 1e-14
    assert max(proj["ones"]) < 1e-12 and max(proj["input"]) < 1e-12
    assert max(proj["symmetric"]) < 1e-12 and max(proj["idempotent"]) < 1e-12
    assert list(proj["rank"]) == [4, 4, 4] and proj["numeric"] < 1e-6
