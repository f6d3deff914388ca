import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from minibn import backend, nn
from minibn.gradcheck import check_layer
from minibn.nn import lpnorm

FAST = settings(max_examples=20, deadline=None)
PS = [1, 2, math.inf]


@st.composite
def inputs(draw, p):
    """A float64 input kept off the kinks: |x| >= 0.05 (p = 1), a unique max |x| per channel (p = inf)."""
    if draw(st.booleans()):
        shape = (draw(st.integers(2, 6)), draw(st.integers(1, 3)))
    else:
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(2, 3)), draw(st.integers(1, 3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=shape) * draw(st.sampled_from([0.2, 1.0, 5.0])) + draw(st.floats(-2, 2))
    if p == 1:
        x = np.where(x >= 0, 1.0, -1.0) * (np.abs(x) + 0.05)
    if p == math.inf:
        top2 = np.sort(np.abs(x.reshape(-1, shape[-1])), axis=0)[-2:]
        assume(np.all(top2[1] - top2[0] > 1e-3))
    return x


def reference(x, gamma, beta, p, eps):
    """Per channel with plain Python over the pooled values."""
    out = np.empty_like(x)
    for j in range(x.shape[-1]):
        v = x[..., j].ravel().tolist()
        mean = sum(v) / len(v)
        if p == 1:
            n = sum(abs(t) for t in v) / len(v)
        elif p == 2:
            n = math.sqrt(sum(t * t for t in v) / len(v))
        else:
            n = max(abs(t) for t in v)
        out[..., j] = gamma[j] * (x[..., j] - mean) / (n + eps) + beta[j]
    return out


def random_lp(channels, p, seed=0, **kw):
    layer = nn.LpNorm(channels, p, dtype="float64", **kw)
    rng = np.random.default_rng(seed)
    layer.params["gamma"][:] = rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels)
    layer.params["beta"][:] = rng.normal(size=channels)
    return layer


@pytest.mark.parametrize("p", PS)
def test_forward_matches_reference(p):
    @FAST
    @given(inputs(p))
    def check(x):
        layer = random_lp(x.shape[-1], p)
        expected = reference(x, layer.params["gamma"], layer.params["beta"], p, 1e-5)
        np.testing.assert_allclose(layer.forward(x, "probe"), expected, rtol=1e-10, atol=1e-10)
    check()


@pytest.mark.parametrize("p", PS)
def test_backward_matches_gradcheck(p):
    @FAST
    @given(inputs(p), st.sampled_from(["train", "probe", "eval"]))
    def check(x, mode):
        layer = random_lp(x.shape[-1], p)
        if mode == "eval":
            layer.forward(x * 2.0 + 0.5, "train")
        check_layer(layer, x, mode=mode)
    check()


@pytest.mark.parametrize("p", PS)
def test_eval_pair_is_the_affine_map_of_the_running_statistics(p):
    rng = np.random.default_rng(6)
    x, dy = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    running_mean, running_norm = rng.normal(size=4), rng.uniform(0.1, 3.0, 4)
    y, cache = lpnorm.forward_eval(x, gamma, beta, running_mean, running_norm, 1e-5)
    inv_norm = 1.0 / (running_norm + 1e-5)
    np.testing.assert_allclose(y, gamma * (x - running_mean) * inv_norm + beta, rtol=1e-12, atol=1e-12)
    dx, grads = lpnorm.backward_eval(dy, cache)
    np.testing.assert_allclose(dx, dy * gamma * inv_norm, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["beta"], dy.sum(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(grads["gamma"], (dy * (x - running_mean) * inv_norm).sum(axis=(0, 1, 2)), rtol=1e-10)
    layer = random_lp(4, p)
    layer.forward(x + 1.0, "train")
    y_ref, cache = lpnorm.forward_eval(x, layer.params["gamma"], layer.params["beta"], layer.running_mean,
                                       layer.running_norm, layer.eps)
    np.testing.assert_array_equal(layer.forward(x, "eval"), y_ref)
    np.testing.assert_array_equal(layer.backward(dy), lpnorm.backward_eval(dy, cache)[0])


def test_subgradient_choices_at_the_kinks():
    """p = 1 uses sign(0) = 0 at x = 0; p = inf gives the whole subgradient to the first maximizer of |x|."""
    x = np.array([[0.0, 2.0], [1.0, -2.0], [-3.0, 2.0], [0.5, 1.0]])
    n1 = lpnorm.lp_norm(x, 1)
    np.testing.assert_allclose(lpnorm.lp_norm_grad(x, 1, n1), np.sign(x) / 4)
    assert lpnorm.lp_norm_grad(x, 1, n1)[0, 0] == 0.0
    ninf = lpnorm.lp_norm(x, math.inf)
    np.testing.assert_array_equal(ninf, [3.0, 2.0])
    expected = np.zeros_like(x)
    expected[2, 0] = -1.0    # unique max |x| in channel 0, negative
    expected[0, 1] = 1.0     # |2| = |-2| = |2|: a three-way tie, the first row takes it
    np.testing.assert_array_equal(lpnorm.lp_norm_grad(x, math.inf, ninf), expected)
    # the forward finds the maximizer once and the backward reuses it: the same norm and subgradient
    norm, first_max = lpnorm.lp_norm_and_maximizer(x, math.inf)
    np.testing.assert_array_equal(norm, np.abs(x).max(axis=0))
    np.testing.assert_array_equal(first_max, [2, 0])
    np.testing.assert_array_equal(lpnorm.lp_norm_grad(x, math.inf, norm, first_max), expected)
    assert lpnorm.lp_norm_and_maximizer(x, 2)[1] is None
    with_nan = x.copy()
    with_nan[1, 1] = np.nan              # a NaN column gives a NaN norm, as max does
    np.testing.assert_array_equal(lpnorm.lp_norm_and_maximizer(with_nan, math.inf)[0], [3.0, np.nan])


def test_p1_at_zero_the_gradient_is_the_mean_of_the_one_sided_slopes():
    """With sign(0) = 0 the analytic gradient at a kink equals the central difference; gradcheck flags the kink."""
    layer = random_lp(2, 1)
    x = np.array([[0.0, 1.0], [1.5, -0.7], [-0.4, 0.3]])
    r = np.random.default_rng(0).normal(size=x.shape)
    layer.forward(x, "probe")
    analytic = layer.backward(r)[0, 0]
    h = 1e-6
    loss = lambda d: float((layer.forward(x + d, "probe") * r).sum())
    bump = np.zeros_like(x)
    bump[0, 0] = h
    right, left = (loss(bump) - loss(0)) / h, (loss(0) - loss(-bump)) / h
    assert abs(right - left) > 1e-3                      # a genuine kink
    assert abs(analytic - (right + left) / 2) < 1e-6     # sign(0) = 0 picks the midpoint
    report = check_layer(layer, x, mode="probe", raise_on_fail=False)
    assert report.kinks, "moving x[0, 0] through 0 must be seen as a kink"
    assert report.ok, str(report)


def test_all_zero_channel_has_zero_output_and_finite_gradient():
    for p in PS:
        layer = random_lp(2, p)
        x = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 3.0]])
        y = layer.forward(x, "probe")
        np.testing.assert_allclose(y[:, 0], layer.params["beta"][0])
        assert np.all(np.isfinite(layer.backward(np.ones_like(y))))


@pytest.mark.parametrize("p", PS)
def test_running_statistics_update_formula_and_eval_mode(p):
    rng = np.random.default_rng(0)
    layer = random_lp(3, p, momentum=0.1)
    x1, x2 = rng.normal(size=(5, 3)) + 1.0, rng.normal(size=(2, 2, 2, 3)) * 3.0
    norm = {1: lambda a: np.abs(a).mean(0), 2: lambda a: np.sqrt((a * a).mean(0)), math.inf: lambda a: np.abs(a).max(0)}[p]
    layer.forward(x1, "train")
    layer.forward(x2, "train")
    flat = x2.reshape(-1, 3)
    np.testing.assert_allclose(layer.running_mean, 0.9 * 0.1 * x1.mean(0) + 0.1 * flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(layer.running_norm, 0.9 * (0.9 * 1.0 + 0.1 * norm(x1)) + 0.1 * norm(flat), rtol=1e-12)
    g, b = layer.params["gamma"], layer.params["beta"]
    expected = g * (x1 - layer.running_mean) / (layer.running_norm + 1e-5) + b
    np.testing.assert_allclose(layer.forward(x1, "eval"), expected, rtol=1e-12)
    np.testing.assert_allclose(layer.forward(x1[:1], "eval"), expected[:1], rtol=1e-12)


@pytest.mark.parametrize("p", PS)
def test_probe_mode_changes_no_state(p):
    layer = random_lp(3, p)
    x = np.random.default_rng(1).normal(size=(4, 3))
    layer.forward(x + 2.0, "train")
    before = layer.state()
    y_probe = layer.forward(x, "probe")
    for k, v in layer.state().items():
        np.testing.assert_array_equal(v, before[k])
    np.testing.assert_allclose(y_probe, reference(x, layer.params["gamma"], layer.params["beta"], p, 1e-5), rtol=1e-10)


@pytest.mark.parametrize("p", ["inf", math.inf, float("inf"), 1, 2, 1.0, np.float64(2.0)])
def test_accepted_p(p):
    assert nn.LpNorm(2, p).p in (1, 2, math.inf)
    assert nn.LpNorm(2, "inf").p == math.inf


@pytest.mark.parametrize("p", [3, 0, 0.5, -1, "two", None, True, float("nan")])
def test_p_outside_1_2_inf_is_an_error_naming_layer_and_value(p):
    with pytest.raises(ValueError, match=rf"LpNorm: p must be 1, 2 or inf .*got {p!r}"):
        nn.LpNorm(3, p)


def test_float32_stays_float32():
    x = np.random.default_rng(0).normal(size=(2, 2, 2, 3)).astype(np.float32)
    for p in PS:
        layer = nn.LpNorm(3, p)
        y = layer.forward(x, "train")
        dx = layer.backward(np.ones_like(y))
        assert y.dtype == dx.dtype == np.float32
        assert all(g.dtype == np.float32 for g in layer.grads.values())
        assert layer.running_norm.dtype == np.float32
        assert layer.backward(layer.forward(x, "eval")).dtype == np.float32


def test_bad_inputs_raise_errors_naming_layer_argument_and_shapes():
    layer = nn.LpNorm(4, 2)
    with pytest.raises(nn.LayerError, match=r"LpNorm\(4, p=2.*x must be 2-D or 4-D, got shape \(2, 3, 4\)"):
        layer.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(nn.LayerError, match=r"LpNorm\(4.*x has 3 features/channels.*\(5, 3\).*expected 4"):
        layer.forward(np.zeros((5, 3), np.float32))
    with pytest.raises(nn.LayerError, match="x has dtype float64 but the layer's parameters are float32"):
        layer.forward(np.zeros((5, 4)))
    with pytest.raises(nn.LayerError, match=r"at least 2 values per channel.*\(1, 4\)"):
        layer.forward(np.zeros((1, 4), np.float32), "probe")
    with pytest.raises(nn.LayerError, match=r"LpNorm\(4.*backward called before forward"):
        layer.backward(np.zeros((5, 4), np.float32))
    layer.forward(np.ones((5, 4), np.float32))
    with pytest.raises(nn.LayerError, match=r"LpNorm\(4.*dy of shape \(4, 4\).*\(5, 4\)"):
        layer.backward(np.zeros((4, 4), np.float32))
    for kwargs, text in (({"num_features": 0}, "num_features"), ({"num_features": 2, "eps": -1}, "eps"),
                         ({"num_features": 2, "momentum": 2}, "momentum")):
        with pytest.raises(ValueError, match=f"LpNorm: {text}"):
            nn.LpNorm(p=1, **kwargs)


def test_same_results_on_every_backend(xp):
    rng = np.random.default_rng(5)
    x, dy = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
    for p in PS:
        results = []
        for name in ("numpy", backend.name_of(xp)):
            layer = random_lp(4, p).to(name)
            y = layer.forward(backend.to_device(x, name), "train")
            dx = layer.backward(backend.to_device(dy, name))
            results.append([backend.to_host(a) for a in (y, dx, layer.grads["gamma"], layer.running_norm)])
        for a, b in zip(*results):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
