"""Stochastic Lanczos quadrature held against the exact spectrum of small float64 networks,
whose full Hessian is built column by column from exact products."""

import math

import numpy as np
import pytest

from minibn import nn
from minibn.measure import hessian, slq
from tests.measure._tiny import batch, smooth_bn_net


def relu_bn_net(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential([nn.Dense(3, 5, rng=rng, dtype="float64"), nn.BatchNorm(5, dtype="float64"), nn.ReLU(),
                          nn.Dense(5, 4, rng=rng, dtype="float64"), nn.BatchNorm(4, dtype="float64"), nn.ReLU(),
                          nn.Dense(4, 2, rng=rng, dtype="float64")])


def full_hessian(model, x, y, mode="probe"):
    with hessian.HessianOperator(model, nn.squared_error, x, y, product="exact", mode=mode) as op:
        H = np.stack([op.matvec(e) for e in np.eye(op.size)], axis=1)
    return (H + H.T) / 2


@pytest.fixture(params=["smooth", "relu"])
def case(request):
    model = smooth_bn_net() if request.param == "smooth" else relu_bn_net()
    x, y = batch(8, 2, seed=3)
    model.value_and_grad(nn.squared_error, x, y, mode="train")  # running statistics away from their start
    return model, x, y


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_density_against_the_exact_spectrum(case, mode):
    model, x, y = case
    H = full_hessian(model, x, y, mode="probe" if mode == "train" else "eval")
    n = H.shape[0]
    exact = np.linalg.eigvalsh(H)
    out = slq.spectral_density(model, nn.squared_error, x, y, steps=90, probes=200, mode=mode, seed=1)
    assert out["mode"] == mode and out["hvps"] <= 200 * n

    grid, density = np.asarray(out["grid"]), np.asarray(out["density"])
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-9)
    # the Krylov space is exhausted (n < 90): every node is an eigenvalue of H, the top one lambda_max
    assert out["lambda_max"] == pytest.approx(exact[-1], rel=1e-8, abs=1e-10)
    assert out["lambda_min"] == pytest.approx(exact[0], rel=1e-8, abs=1e-10)
    top = hessian.top_eigenvalue(model, nn.squared_error, x, y, which="LA", tol=1e-12,
                                 mode="probe" if mode == "train" else "eval")["eigenvalue"]
    assert out["lambda_max"] == pytest.approx(top, rel=1e-8, abs=1e-10)

    # each probe's quadrature gives v^T H v and v^T H^2 v exactly; their mean estimates tr(H)/n and tr(H^2)/n
    rng = np.random.default_rng(1)
    per_probe = []
    for nodes, weights in zip(out["nodes"], out["weights"]):
        v = rng.standard_normal(n)
        v /= np.linalg.norm(v)
        nodes, weights = np.asarray(nodes), np.asarray(weights)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert (nodes * weights).sum() == pytest.approx(v @ H @ v, rel=1e-9, abs=1e-12)
        assert (nodes ** 2 * weights).sum() == pytest.approx(v @ H @ H @ v, rel=1e-9, abs=1e-12)
        per_probe.append((v @ H @ v, v @ H @ H @ v))
    per_probe = np.asarray(per_probe)
    stderr = per_probe.std(axis=0, ddof=1) / math.sqrt(len(per_probe))
    assert abs(out["moment1"] - np.trace(H) / n) <= 4 * stderr[0]
    assert abs(out["moment2"] - np.trace(H @ H) / n) <= 4 * stderr[1]
    # the smoothed density's own moments: the quadrature's, plus sigma^2 in the second
    mean = np.trapezoid(grid * density, grid)
    assert mean == pytest.approx(out["moment1"], rel=1e-6, abs=1e-9)
    assert np.trapezoid(grid ** 2 * density, grid) == pytest.approx(out["moment2"] + out["sigma"] ** 2, rel=1e-6)


def test_lanczos_on_a_known_matrix_finds_outliers_in_few_steps():
    rng = np.random.default_rng(0)
    n = 400
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([rng.uniform(-1, 1, n - 2), [50.0, 20.0]])
    H = (q * values) @ q.T
    alpha, beta = slq.lanczos(lambda v: H @ v, rng.standard_normal(n), 30)
    assert len(alpha) == 30 and len(beta) == 29
    nodes, weights = slq.gauss_quadrature(alpha, beta)
    assert nodes[-1] == pytest.approx(50.0, rel=1e-10)
    assert nodes[-2] == pytest.approx(20.0, rel=1e-8)
    assert weights.sum() == pytest.approx(1.0)


def test_outlier_ratio_and_bad_arguments(case):
    model, x, y = case
    out = slq.spectral_density(model, nn.squared_error, x, y, steps=10, probes=2)
    assert slq.outlier_ratio(out) == pytest.approx(out["lambda_max"] / math.sqrt(out["moment2"]))
    assert math.isnan(slq.outlier_ratio({"lambda_max": None, "moment2": 1.0}))
    with pytest.raises(ValueError, match="mode"):
        slq.spectral_density(model, nn.squared_error, x, y, mode="probe")
    with pytest.raises(ValueError, match="steps"):
        slq.spectral_density(model, nn.squared_error, x, y, steps=0)


def test_measurement_leaves_the_model_untouched(case):
    model, x, y = case
    before = model.flat_params().copy()
    state = model.state()
    slq.spectral_density(model, nn.squared_error, x, y, steps=5, probes=2)
    assert np.array_equal(model.flat_params(), before)
    after = model.state()
    assert all(np.array_equal(state[i][k], after[i][k]) for i in state for k in state[i])


def test_chunked_operator_is_the_mean_of_the_chunks_hessians(case):
    model, x, y = case
    x2, y2 = batch(8, 2, seed=4)
    H1, H2 = full_hessian(model, x, y), full_hessian(model, x2, y2)
    with hessian.HessianOperator(model, nn.squared_error, [x, x2], [y, y2], product="exact") as op:
        H = np.stack([op.matvec(e) for e in np.eye(op.size)], axis=1)
    np.testing.assert_allclose(H, (H1 + H2) / 2, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="equal length"):
        hessian.HessianOperator(model, nn.squared_error, [x, x2], [y])
    # eval mode is another function: running statistics, not the batch's
    assert not np.allclose(full_hessian(model, x, y, mode="eval"), H1)


def test_hessian_recorder_measures_a_fixed_set_in_the_mode_asked(case):
    model, x, y = case
    other_x, other_y = batch(8, 2, seed=9)
    rec = hessian.HessianRecorder(nn.squared_error, every=1, which="LA", mode="eval", data=(x, y), curvature=False,
                                  tol=1e-10)
    rec(0, model, other_x, other_y, None)
    expected = hessian.top_eigenvalue(model, nn.squared_error, x, y, which="LA", mode="eval", tol=1e-10)["eigenvalue"]
    assert rec.result() == {"steps": [0], "top_eigenvalue": [pytest.approx(expected, rel=1e-8)]}


def test_new_instruments_on_both_backends(xp):
    """SLQ, the depth profile and the effective-LR recorder give NumPy's numbers on CuPy (the
    stand-in where no GPU is usable)."""
    from minibn import backend, optim
    from minibn.measure import depth, effective_lr

    x, y = batch(8, 2, seed=3)
    host = relu_bn_net()
    want = slq.spectral_density(host, nn.squared_error, x, y, steps=6, probes=2, seed=4)
    want_depth = depth.depth_profile(host, nn.squared_error, x, y)
    model = relu_bn_net().to(backend.name_of(xp))
    xd, yd = backend.to_device(x, xp), backend.to_device(y, xp)
    got = slq.spectral_density(model, nn.squared_error, xd, yd, steps=6, probes=2, seed=4)
    assert got["lambda_max"] == pytest.approx(want["lambda_max"], rel=1e-10)
    np.testing.assert_allclose(got["density"], want["density"], rtol=1e-8, atol=1e-12)
    got_depth = depth.depth_profile(model, nn.squared_error, xd, yd)
    assert got_depth["rank"] == want_depth["rank"]
    np.testing.assert_allclose(got_depth["grad_norm"], want_depth["grad_norm"], rtol=1e-12)
    np.testing.assert_allclose(got_depth["effective_rank"], want_depth["effective_rank"], rtol=1e-10)
    rec = effective_lr.EffectiveLRRecorder(nn.squared_error, every=1)
    rec(0, model, xd, yd, optim.SGD(model, 0.1))
    ref = effective_lr.EffectiveLRRecorder(nn.squared_error, every=1)
    ref(0, host, x, y, optim.SGD(host, 0.1))
    np.testing.assert_allclose(rec.result()["angle"], ref.result()["angle"], rtol=1e-10)
