"""Hessian toolkit against the Hessian built column by column from gradient differences,
and against a quadratic whose Hessian is known in closed form."""

import json

import numpy as np
import pytest

from minibn import backend, nn
from minibn.measure import hessian
from tests.measure._tiny import (assert_untouched, batch, fingerprint, hessian_by_differences, smooth_bn_net,
                                 stateful_net)


@pytest.fixture(scope="module")
def bn_case():
    """A tiny BatchNorm net (53 parameters) and its Hessian from the Jacobian of the gradient."""
    model = smooth_bn_net(seed=1)
    x, y = batch(6, 2, seed=2)
    return model, x, y, hessian_by_differences(model, nn.squared_error, x, y)


def quadratic(seed=0):
    """L(W) = ||X W - Y||^2, W of shape (in, out) flattened row-major: H = 2 kron(X^T X, I_out)."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential([nn.Dense(4, 3, bias=False, rng=rng, dtype="float64")])
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    return model, x, y, 2 * np.kron(x.T @ x, np.eye(3))


def largest_magnitude(values):
    return values[np.argmax(abs(values))]


def test_hvp_matches_the_differenced_hessian(bn_case, xp):
    model, x, y, H = bn_case
    model = model.to(backend.name_of(xp))
    x, y = backend.to_device(x, xp), backend.to_device(y, xp)
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.normal(size=H.shape[0])
        hv = backend.to_host(hessian.hvp(model, nn.squared_error, x, y, backend.to_device(v, xp)))
        np.testing.assert_allclose(hv, H @ v, rtol=0, atol=1e-6 * np.linalg.norm(H @ v))
    model.to("numpy")


def test_hvp_is_exact_on_a_quadratic():
    model, x, y, H = quadratic()
    v = np.random.default_rng(1).normal(size=H.shape[0])
    np.testing.assert_allclose(hessian.hvp(model, nn.squared_error, x, y, v), H @ v, rtol=1e-8, atol=1e-8)
    assert not hessian.hvp(model, nn.squared_error, x, y, np.zeros(H.shape[0])).any()


@pytest.mark.parametrize("method, tol", [("lanczos", 1e-8), ("power", 1e-10)])
def test_top_eigenvalue(bn_case, method, tol):
    # Lanczos's tol bounds the relative residual, which the differenced products keep above ~1e-9.
    model, x, y, H = bn_case
    out = hessian.top_eigenvalue(model, nn.squared_error, x, y, method=method, iterations=1000, tol=tol)
    assert out["converged"] and out["method"] == method and out["hvps"] > 0
    assert out["eigenvalue"] == pytest.approx(largest_magnitude(np.linalg.eigvalsh(H)), rel=1e-5)
    json.dumps(out, allow_nan=False)


def test_lanczos_converged_is_the_residual_of_the_returned_pair_on_both_backends(bn_case, xp):
    model, x, y, H = bn_case
    model = model.to(backend.name_of(xp))
    x, y = backend.to_device(x, xp), backend.to_device(y, xp)
    want = largest_magnitude(np.linalg.eigvalsh(H))
    found = hessian.top_eigenvalue(model, nn.squared_error, x, y, iterations=100, tol=1e-6)
    assert found["converged"] and found["eigenvalue"] == pytest.approx(want, rel=1e-6)
    # differenced products carry a ~1e-9 |lambda| error: their residual cannot meet 1e-13, however
    # long Lanczos runs; exact products can, and agree with the full Hessian to that precision
    assert not hessian.top_eigenvalue(model, nn.squared_error, x, y, iterations=3, tol=1e-13, product="fd")["converged"]
    exact = hessian.top_eigenvalue(model, nn.squared_error, x, y, iterations=100, tol=1e-12)
    assert exact["converged"] and exact["eigenvalue"] == pytest.approx(want, rel=1e-8)
    model.to("numpy")


def test_top_eigenvalue_largest_algebraic_and_per_block(bn_case):
    model, x, y, H = bn_case
    out = hessian.top_eigenvalue(model, nn.squared_error, x, y, which="LA", tol=1e-10)
    assert out["eigenvalue"] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-5)
    for b, s in enumerate(model.block_slices()):
        block = H[s, s]
        out = hessian.top_eigenvalue(model, nn.squared_error, x, y, block=b, tol=1e-10)
        assert out["block"] == b
        assert out["eigenvalue"] == pytest.approx(largest_magnitude(np.linalg.eigvalsh(block)), rel=1e-5)


def test_top_eigenvalue_of_a_quadratic():
    model, x, y, _ = quadratic()
    expected = 2 * np.linalg.eigvalsh(x.T @ x)[-1]
    for method in hessian.METHODS:
        out = hessian.top_eigenvalue(model, nn.squared_error, x, y, method=method, iterations=2000, tol=1e-12)
        assert out["eigenvalue"] == pytest.approx(expected, rel=1e-7)


def test_hutchinson_trace():
    # X with orthogonal columns makes H diagonal, where every Rademacher sample is exact
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(9, 4)))
    x = q * np.array([1.0, 2.0, 3.0, 4.0])
    model = nn.Sequential([nn.Dense(4, 3, bias=False, rng=rng, dtype="float64")])
    y = rng.normal(size=(9, 3))
    out = hessian.hutchinson_trace(model, nn.squared_error, x, y, samples=3, seed=0)
    assert out["trace"] == pytest.approx(2 * 3 * (x * x).sum(), rel=1e-8)
    assert out["stderr"] == pytest.approx(0.0, abs=1e-6) and out["samples"] == out["hvps"] == 3
    # a full Hessian: the seeded estimate is reproducible and within its standard error
    model, x, y, H = quadratic()
    a = hessian.hutchinson_trace(model, nn.squared_error, x, y, samples=200, seed=4)
    b = hessian.hutchinson_trace(model, nn.squared_error, x, y, samples=200, seed=4)
    assert a == b and a["stderr"] > 0
    assert abs(a["trace"] - np.trace(H)) < 4 * a["stderr"]


def test_hutchinson_trace_of_a_block(bn_case):
    model, x, y, H = bn_case
    s = model.block_slices()[1]
    out = hessian.hutchinson_trace(model, nn.squared_error, x, y, samples=400, block=1, seed=0)
    assert abs(out["trace"] - np.trace(H[s, s])) < 4 * out["stderr"]


def test_gradient_curvature(bn_case):
    model, x, y, H = bn_case
    model.value_and_grad(nn.squared_error, x, y, mode="probe")
    g = model.flat_grads()
    assert hessian.gradient_curvature(model, nn.squared_error, x, y) == pytest.approx(g @ H @ g / (g @ g), rel=1e-5)
    s = model.block_slices()[2]
    expected = g[s] @ H[s, s] @ g[s] / (g[s] @ g[s])
    assert hessian.gradient_curvature(model, nn.squared_error, x, y, block=2) == pytest.approx(expected, rel=1e-5)


def test_float32_model_is_measured_on_a_float64_copy(bn_case):
    model64, x, y, H = bn_case
    model32 = smooth_bn_net(seed=1, dtype="float32")
    before = fingerprint(model32)
    v = np.random.default_rng(2).normal(size=H.shape[0])
    hv = hessian.hvp(model32, nn.squared_error, x.astype("float32"), y.astype("float32"), v)
    assert hv.dtype == np.float64
    np.testing.assert_allclose(hv, H @ v, rtol=0, atol=1e-4 * np.linalg.norm(H @ v))  # float32 initial weights
    assert_untouched(model32, before)


def test_instruments_leave_model_untouched(xp):
    model = stateful_net().to(backend.name_of(xp))
    x, y = (backend.to_device(a, xp) for a in batch(8, 2))
    model.value_and_grad(nn.squared_error, x, y, mode="train")
    before = fingerprint(model)
    hessian.top_eigenvalue(model, nn.squared_error, x, y, iterations=20, tol=1e-3)
    hessian.top_eigenvalue(model, nn.squared_error, x, y, method="power", iterations=5)
    hessian.hutchinson_trace(model, nn.squared_error, x, y, samples=2)
    hessian.gradient_curvature(model, nn.squared_error, x, y, block=1)
    assert_untouched(model, before)


def test_recorder(bn_case):
    model, x, y, H = bn_case
    rec = hessian.HessianRecorder(nn.squared_error, every=3, trace_samples=2, per_block=True, tol=1e-8)
    rec(0, model, x, y, None)
    out = rec.result()
    assert out["steps"] == [0] and len(out["trace"]) == 1 and len(out["block_top_eigenvalue"][0]) == 3
    assert out["top_eigenvalue"][0] == pytest.approx(largest_magnitude(np.linalg.eigvalsh(H)), rel=1e-5)
    again = hessian.HessianRecorder(nn.squared_error, every=3, trace_samples=2, per_block=True)
    again.load_state(json.loads(json.dumps(rec.state())))
    assert again.result() == out


def test_bad_arguments(bn_case):
    model, x, y, _ = bn_case
    with pytest.raises(ValueError, match="method must be one of"):
        hessian.top_eigenvalue(model, nn.squared_error, x, y, method="qr")
    with pytest.raises(ValueError, match="which must be 'LM'"):
        hessian.top_eigenvalue(model, nn.squared_error, x, y, method="power", which="LA")
    with pytest.raises(ValueError, match="block 7 out of range; the model has 3 blocks"):
        hessian.gradient_curvature(model, nn.squared_error, x, y, block=7)
    with pytest.raises(ValueError, match="v has 5 entries, expected 53"):
        hessian.hvp(model, nn.squared_error, x, y, np.ones(5))
    with pytest.raises(ValueError, match="product must be one of"):
        hessian.hvp(model, nn.squared_error, x, y, np.ones(53), product="autograd")
    with pytest.raises(TypeError, match="no tangent known for the loss"):
        hessian.hvp(model, lambda pred, target: nn.squared_error(pred, target), x, y, np.ones(53), product="exact")


def test_fd_product_stays_a_cross_check_on_smooth_networks(bn_case):
    model, x, y, H = bn_case
    v = np.random.default_rng(5).normal(size=H.shape[0])
    exact = hessian.hvp(model, nn.squared_error, x, y, v)
    differenced = hessian.hvp(model, nn.squared_error, x, y, v, product="fd")
    np.testing.assert_allclose(differenced, exact, rtol=0, atol=1e-6 * np.linalg.norm(exact))
