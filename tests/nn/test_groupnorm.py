import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn
from minibn.nn import groupnorm, normalization
from minibn.testing import check_layer_property, layer_inputs
from tests.nn import test_hvp

FAST = settings(max_examples=15, deadline=None)


def reference(x, gamma, beta, groups, eps):
    """Per sample and group, in plain Python loops over the group's values."""
    out = np.empty_like(x)
    size = x.shape[-1] // groups
    for n in range(x.shape[0]):
        for g in range(groups):
            block = x[n, ..., g * size:(g + 1) * size]
            values = block.ravel().tolist()
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / len(values)
            out[n, ..., g * size:(g + 1) * size] = (block - mean) / math.sqrt(var + eps)
    return out * gamma + beta


def halves(channels):
    """A GroupNorm of 2 groups where the channel count allows, else 1 (the gradient checks' layer)."""
    return nn.GroupNorm(2 if channels % 2 == 0 else 1, channels)


@FAST
@given(layer_inputs(ndim=(2, 4), channels=6, min_pooled=1), st.sampled_from([1, 2, 3, 6]), st.integers(0, 2**32 - 1))
def test_forward_matches_reference(x, groups, seed):
    if x[0].size // groups < 2:
        return  # one value per group: refused, tested below
    layer = nn.GroupNorm(groups, 6, dtype="float64")
    rng = np.random.default_rng(seed)
    layer.params["gamma"][:] = rng.normal(size=6)
    layer.params["beta"][:] = rng.normal(size=6)
    y = layer.forward(x, "train")
    np.testing.assert_allclose(y, reference(x, layer.params["gamma"], layer.params["beta"], groups, 1e-5),
                               rtol=1e-9, atol=1e-9)


def test_backward_matches_gradcheck():
    check_layer_property(halves, ndim=(2, 4), modes=("train", "probe", "eval"), max_examples=25,
                         inputs=layer_inputs(ndim=(2, 4), max_channels=6, min_pooled=1).filter(
                             lambda x: x[0].size // (2 if x.shape[-1] % 2 == 0 else 1) >= 2))


def test_modes_are_one_map_and_samples_do_not_mix():
    x = np.random.default_rng(0).normal(size=(4, 2, 3, 6))
    layer = nn.GroupNorm(3, 6, dtype="float64")
    y = layer.forward(x, "train")
    assert layer.state() == {}
    np.testing.assert_array_equal(layer.forward(x, "eval"), y)
    np.testing.assert_array_equal(layer.forward(x, "probe"), y)
    np.testing.assert_allclose(layer.forward(x[1:2], "train"), y[1:2], rtol=1e-13, atol=1e-13)


def test_pooled_view_columns_are_the_sample_groups():
    x = np.arange(2 * 2 * 1 * 4.0).reshape(2, 2, 1, 4)  # (N, H, W, C), 2 groups of 2 channels
    cols = nn.GroupNorm(2, 4).pooled_view(x)
    assert cols.shape == (4, 4)
    assert sorted(cols[:, 1]) == [2.0, 3.0, 6.0, 7.0]      # sample 0, group 1: channels 2, 3 at both positions
    assert sorted(cols[:, 2]) == [8.0, 9.0, 12.0, 13.0]    # sample 1, group 0


def test_default_groups():
    assert [groupnorm.default_groups(c) for c in (4, 10, 16, 64, 128, 512, 7, 1)] == [2, 5, 8, 32, 32, 32, 1, 1]
    for c in range(1, 600):
        g = groupnorm.default_groups(c)
        assert c % g == 0 and g <= 32 and (c // g >= 2 or g == 1)


def test_registered_with_the_model_option():
    entry = normalization.get("groupnorm")
    assert entry.label == "GroupNorm" and entry.make(64, rng=None, dtype="float32").num_groups == 32
    assert entry.make(64, rng=None, dtype="float32", num_groups=4).num_groups == 4
    assert entry.make(64, rng=None, dtype="float32", num_groups=lambda c: c // 16).num_groups == 4


def test_bad_inputs_raise_errors_naming_layer_argument_and_shapes():
    with pytest.raises(ValueError, match=r"GroupNorm: num_channels=6 is not divisible by num_groups=4"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm: num_groups must be a positive integer, got 0"):
        nn.GroupNorm(0, 6)
    with pytest.raises(ValueError, match=r"GroupNorm: eps"):
        nn.GroupNorm(2, 6, eps=float("nan"))
    layer = nn.GroupNorm(2, 4)
    with pytest.raises(nn.LayerError, match=r"GroupNorm\(2, 4.*x has 5 features/channels.*\(3, 5\).*expected 4"):
        layer.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(nn.LayerError, match=r"GroupNorm\(2, 4.*x must be 2-D or 4-D, got shape \(3, 4, 4\)"):
        layer.forward(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(nn.LayerError, match=r"GroupNorm\(2, 2.*per sample and group.*\(3, 2\)"):
        nn.GroupNorm(2, 2).forward(np.zeros((3, 2), np.float32), "eval")
    with pytest.raises(nn.LayerError, match="x has dtype float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((3, 4)))


def test_float32_stays_float32():
    layer = nn.GroupNorm(2, 4)
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == layer.backward(np.ones_like(y)).dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())


def test_same_results_on_every_backend(xp):
    rng = np.random.default_rng(5)
    x, dy = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
    results = []
    for name in ("numpy", backend.name_of(xp)):
        layer = nn.GroupNorm(2, 4, dtype="float64").to(name)
        y = layer.forward(backend.to_device(x, name), "train")
        dx = layer.backward(backend.to_device(dy, name))
        results.append([backend.to_host(a) for a in (y, dx, layer.grads["gamma"])])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [lambda c: nn.GroupNorm(2, c, dtype="float64"), lambda c: nn.LayerNorm(c, dtype="float64")],
                         ids=["groupnorm", "layernorm"])
@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 4), half=st.integers(2, 3), seed=st.integers(0, 2**16), mode=st.sampled_from(["probe", "eval"]))
def test_exact_hvp_matches_the_differenced_hessian(make, n, half, seed, mode):
    """The tangent passes (module docstring) through Sequential.hvp, as tests/nn/test_hvp.py checks the other layers."""
    rng = np.random.default_rng(seed)
    model = test_hvp.perturb(test_hvp.dense_sandwich(make, 2 * half, rng), rng)
    x = rng.normal(size=(n, 2 * half))
    test_hvp.check_against_differences(model, nn.squared_error, x, rng.normal(size=(n, 3)), mode)
