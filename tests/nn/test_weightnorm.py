import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, models, nn, theory
from minibn.nn import normalization, weightnorm
from minibn.testing import check_layer_property
from tests.nn import test_hvp

FAST = settings(max_examples=15, deadline=None)


def wn_dense(channels, bias=True):
    return nn.WeightNorm(nn.Dense(channels, 3, bias=bias, rng=channels))


def wn_conv(channels):
    return nn.WeightNorm(nn.Conv2d(channels, 2, 3, stride=1, padding=1, rng=channels))


def test_backward_matches_gradcheck_dense():
    check_layer_property(wn_dense, ndim=2, modes=("train", "probe", "eval"), max_examples=20,
                         output_shape=lambda s: (s[0], 3))
    check_layer_property(lambda c: wn_dense(c, bias=False), ndim=2, max_examples=10, output_shape=lambda s: (s[0], 3))


def test_backward_matches_gradcheck_conv():
    check_layer_property(wn_conv, ndim=4, modes=("train", "probe"), max_examples=15,
                         output_shape=lambda s: (*s[:3], 2))


@FAST
@given(st.sampled_from([(4, 3), (3, 3, 2, 5)]), st.integers(0, 2**32 - 1))
def test_forward_and_backward_formulas(shape, seed):
    """W = g v/||v|| per unit (the last axis); dg = <dW, v>/||v||, dv = (g/||v||)(dW - (<dW, v>/||v||^2) v)."""
    rng = np.random.default_rng(seed)
    v, g, dW = rng.normal(size=shape), rng.normal(size=shape[-1]), rng.normal(size=shape)
    W, cache = weightnorm.forward(v, g)
    grads = weightnorm.backward(dW, cache)
    for j in range(shape[-1]):
        vj, dWj = v[..., j].ravel(), dW[..., j].ravel()
        norm = np.sqrt(vj @ vj)
        np.testing.assert_allclose(W[..., j].ravel(), g[j] * vj / norm, rtol=1e-12)
        np.testing.assert_allclose(grads["g"][j], dWj @ vj / norm, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["v"][..., j].ravel(), g[j] / norm * (dWj - (dWj @ vj) / norm**2 * vj),
                                   rtol=1e-10, atol=1e-12)
        assert abs(grads["v"][..., j].ravel() @ vj) < 1e-10 * norm * np.abs(dWj).sum()   # dv is orthogonal to v


def test_wrapping_keeps_the_function_and_the_bias():
    rng = np.random.default_rng(0)
    layer = nn.Dense(5, 3, rng=1, dtype="float64")
    layer.params["b"][:] = rng.normal(size=3)
    x = rng.normal(size=(4, 5))
    before = layer.forward(x)
    wrapped = nn.WeightNorm(layer)
    assert sorted(wrapped.params) == ["b", "g", "v"] and wrapped.layer is layer and wrapped.starts_block
    np.testing.assert_allclose(wrapped.forward(x), before, rtol=1e-12)
    np.testing.assert_allclose(wrapped.params["g"], np.linalg.norm(wrapped.params["v"], axis=0))


def test_scale_invariance_in_v_by_the_generic_check():
    """The map v -> W is invariant to v_j -> a_j v_j (a_j > 0): checked on the code by minibn.theory's
    generic function, per unit scales included; the loss through the wrapped layer too."""
    rng = np.random.default_rng(4)
    v, g = rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4)
    pair = (lambda v_: weightnorm.forward(v_, g), lambda dW, cache: weightnorm.backward(dW, cache)["v"])
    inv = theory.normalizer_scale_invariance(pair, v, scales=(0.5, 7.0, rng.uniform(0.1, 10.0, size=4)))
    assert inv["max_output_error"] < 1e-14 and inv["max_grad_error"] < 1e-12
    layer = wn_dense(5)
    layer.astype("float64")
    x = rng.normal(size=(6, 5))
    y = layer.forward(x, "probe")
    layer.params["v"] *= np.array([3.0, 0.2, 11.0])
    np.testing.assert_allclose(layer.forward(x, "probe"), y, rtol=1e-12)


def test_models_reparametrize_the_weight_layers_a_normalization_would_follow():
    plain, wn = models.dln(depth=4, width=6, rng=0), models.dln(depth=4, width=6, norm="weightnorm", rng=0)
    assert [type(layer).__name__ for layer in wn] == ["WeightNorm"] * 3 + ["Dense"]
    x = np.random.default_rng(1).normal(size=(5, 6))
    np.testing.assert_allclose(wn.forward(x), plain.forward(x), rtol=1e-12)   # same initial function
    assert wn.blocks() == [[0], [1], [2], [3]]
    vgg = models.vgg(config=[4, "M", 8, "M"], norm="weightnorm", input_size=8, rng=0)
    assert [type(layer).__name__ for layer in vgg][:3] == ["WeightNorm", "ReLU", "MaxPool2d"]
    assert isinstance(vgg[0].layer, nn.Conv2d) and isinstance(vgg[-1], nn.Dense)


def test_registered_as_a_reparametrization():
    entry = normalization.get("weightnorm")
    assert entry.label == "WeightNorm" and entry.make(4, rng=None, dtype="float32") is None
    assert isinstance(entry.reparametrize(nn.Dense(2, 4)), nn.WeightNorm)


def test_bad_inputs_raise_errors_naming_layer_argument_and_shapes():
    with pytest.raises(ValueError, match=r"WeightNorm: wraps a Dense or Conv2d layer, got ReLU"):
        nn.WeightNorm(nn.ReLU())
    layer = wn_dense(4)
    with pytest.raises(nn.LayerError, match=r"Dense\(4, 3, bias=True\): x has 5 features/channels.*\(2, 5\).*expected 4"):
        layer.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(nn.LayerError, match=r"WeightNorm\(Dense\(4, 3, bias=True\)\): backward called before forward"):
        wn_dense(4).backward(np.zeros((2, 3), np.float32))
    layer.params["v"] = np.zeros((4, 2), np.float32)
    with pytest.raises(nn.LayerError, match=r"WeightNorm\(Dense.*parameter 'v' has shape \(4, 2\), the layer declares \(4, 3\)"):
        layer.forward(np.zeros((2, 4), np.float32))


def test_same_results_on_every_backend(xp):
    rng = np.random.default_rng(5)
    x, dy = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 2))
    results = []
    for name in ("numpy", backend.name_of(xp)):
        layer = wn_conv(3).astype("float64").to(name)
        y = layer.forward(backend.to_device(x, name))
        dx = layer.backward(backend.to_device(dy, name))
        results.append([backend.to_host(a) for a in (y, dx, layer.grads["g"], layer.grads["v"])])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_docs_quote_the_code():
    import inspect
    import pathlib
    page = (pathlib.Path(__file__).parents[2] / "docs" / "layers" / "weightnorm.md").read_text()
    source = inspect.getsource(weightnorm.backward)
    for line in ("dg = (dW * v_hat).reshape(-1, dW.shape[-1]).sum(axis=0)", "dv = (g * inv_norm) * (dW - v_hat * dg)"):
        assert line in page and line in source


@settings(max_examples=8, deadline=None)
@given(n=st.integers(2, 4), features=st.integers(2, 3), seed=st.integers(0, 2**16), conv=st.booleans())
def test_exact_hvp_matches_the_differenced_hessian(n, features, seed, conv):
    """The tangent passes (module docstring) through Sequential.hvp, as tests/nn/test_hvp.py checks the other layers."""
    rng = np.random.default_rng(seed)
    if conv:
        layers = [nn.WeightNorm(nn.Conv2d(features, 2, 2, rng=rng, dtype="float64")), nn.Flatten(),
                  nn.Dense(2 * 2 * 2, 3, rng=rng, dtype="float64")]
        x = rng.normal(size=(n, 3, 3, features))
    else:
        layers = [nn.WeightNorm(nn.Dense(features, 4, rng=rng, dtype="float64")),
                  nn.WeightNorm(nn.Dense(4, 3, bias=False, rng=rng, dtype="float64"))]
        x = rng.normal(size=(n, features))
    model = test_hvp.perturb(nn.Sequential(layers), rng)
    test_hvp.check_against_differences(model, nn.softmax_cross_entropy, x, rng.integers(0, 3, size=n))
