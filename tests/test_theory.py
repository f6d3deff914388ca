"""docs/protocol.md §5 checked against minibn's own BatchNorm and Dense code (minibn/theory.py).

Each true statement must hold on random instances (hypothesis draws m, widths, gamma,
beta, the scale and offset of the batch, and a smooth downstream loss with a
non-trivial Hessian) to a tight float64 tolerance; the printed 1/sqrt(m) form of
Theorem 4.1 and the premise of Lemma 4.5 must fail on the instances that refute them.
"""

import math

import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, gradcheck, nn, theory
from minibn.nn import batchnorm

EXAMPLES = settings(max_examples=25, deadline=None)


def layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size, xp=None):
    """x (m, d), W (d, C) with y = x W of the given scale/offset, gamma, beta, and a smooth loss."""
    xp = backend.get(xp or "numpy")
    rng = backend.rng(seed)
    x = rng.standard_normal((m, d)) * y_scale + y_offset
    W = rng.standard_normal((d, C))
    gamma = gamma_size * rng.uniform(0.5, 2.0, size=C) * rng.choice([-1.0, 1.0], size=C)
    beta = rng.uniform(-3.0, 3.0, size=C)
    kind = theory.SMOOTH_LOSSES[int(rng.integers(len(theory.SMOOTH_LOSSES)))]
    loss, hvp = theory.smooth_loss(kind, (m, C), rng, xp=xp)
    dev = [backend.to_device(a, xp) for a in (x, W, gamma, beta)]
    return (*dev, loss, hvp)


instances = dict(
    seed=st.integers(0, 2**32 - 1), m=st.integers(3, 24), C=st.integers(1, 4), d=st.integers(1, 5),
    y_scale=st.sampled_from([1e-2, 1.0, 30.0]), y_offset=st.sampled_from([0.0, -4.0, 50.0]),
    gamma_size=st.sampled_from([0.1, 1.0, 7.0]),
)


def rounding_tolerance(y):
    """float64 rounding, amplified by the mean subtraction when |mean| >> sigma (y_offset 50 with
    y_scale 0.01 makes that factor ~1e4): 1e-13 (10 + max|y|/sigma)."""
    return 1e-13 * (10.0 + theory.conditioning(y))


def downstream_gradient(x, W, gamma, beta, loss):
    y = x @ W
    z, _ = theory.bn_forward(y, gamma, beta)
    return y, loss(z)[1]


@EXAMPLES
@given(**instances)
def test_bn_jacobian_is_the_scaled_projection(seed, m, C, d, y_scale, y_offset, gamma_size):
    x, W, gamma, beta, _, _ = layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size)
    jac = theory.bn_jacobian(x @ W, gamma, beta)
    assert jac["code"].shape == (C, m, m)
    tol = rounding_tolerance(x @ W)
    assert theory.relative_error(jac["code"], jac["theory"]) < tol
    assert theory.relative_error(jac["numeric"], jac["theory"]) < 1e-6
    assert jac["annihilated"] < tol and jac["idempotence"] < tol


def test_bn_jacobian_on_a_subset_of_rows_matches_the_full_one():
    x, W, gamma, beta, _, _ = layer_instance(3, 12, 2, 3, 1.0, 0.0, 1.0)
    full = theory.bn_jacobian(x @ W, gamma, beta)
    part = theory.bn_jacobian(x @ W, gamma, beta, rows_idx=[1, 7])
    assert theory.relative_error(part["code"], full["code"][:, [1, 7]]) < 1e-15
    assert theory.relative_error(part["numeric"], part["theory"]) < 1e-6
    assert "idempotence" not in part


def test_bn_jacobian_check_can_fail():
    """Against a wrong sigma (the unbiased one) the projection does not match the code."""
    x, W, gamma, beta, _, _ = layer_instance(4, 6, 2, 3, 1.0, 0.0, 1.0)
    y = x @ W
    jac = theory.bn_jacobian(y, gamma, beta, numeric=False)
    m = y.shape[0]
    assert theory.relative_error(jac["code"], jac["theory"] * math.sqrt((m - 1) / m)) > 1e-2


@EXAMPLES
@given(**instances)
def test_theorem_4_1_holds_with_equality_for_1_over_m(seed, m, C, d, y_scale, y_offset, gamma_size):
    x, W, gamma, beta, loss, _ = layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size)
    y, g_hat = downstream_gradient(x, W, gamma, beta, loss)
    r = theory.theorem_4_1(y, gamma, beta, g_hat)
    assert float(abs(r["lhs"] - r["rhs"]).max()) <= rounding_tolerance(y) * float(r["scale"].max())
    # the printed 1/sqrt(m) form never exceeds the true value, and is strictly below it
    # (so the printed inequality is violated) wherever <g_hat, y_hat> != 0
    gap = r["lhs"] - r["rhs_printed"]
    expected = r["lhs"] - r["rhs"] + (gamma / theory.column_stats(y)[1]) ** 2 * r["g_dot_yhat"] ** 2 * (
        1 / math.sqrt(m) - 1 / m)
    assert float(abs(gap - expected).max()) <= rounding_tolerance(y) * float(r["scale"].max())
    assert bool((gap >= -rounding_tolerance(y) * r["scale"]).all())


def test_theorem_4_1_printed_form_fails_on_the_half_squared_norm():
    """L(z) = ||z||^2/2, gamma = 1, beta = 0: L_hat = ||y_hat||^2/2 = m/2 is constant in y, so the
    BN gradient is 0, but the printed bound is (1/sigma^2)(m - m^1.5) < 0."""
    m = 4
    y = backend.host.asarray([[1.0], [2.0], [3.0], [5.0]])
    gamma, beta = backend.host.ones(1), backend.host.zeros(1)
    z, _ = theory.bn_forward(y, gamma, beta)
    r = theory.theorem_4_1(y, gamma, beta, z)            # g_hat = dL/dz = z = y_hat
    sigma = float(theory.column_stats(y)[1][0])
    assert float(r["lhs"][0]) < 1e-28 and abs(float(r["rhs"][0])) < 1e-13
    assert float(r["rhs_printed"][0]) == pytest.approx((m - m ** 1.5) / sigma ** 2, rel=1e-12)
    assert float(r["lhs"][0]) > float(r["rhs_printed"][0]) + 1.0


def test_theorem_4_1_printed_form_fails_on_a_random_instance():
    x, W, gamma, beta, loss, _ = layer_instance(0, 7, 3, 4, 1.0, 0.0, 1.0)
    y, g_hat = downstream_gradient(x, W, gamma, beta, loss)
    r = theory.theorem_4_1(y, gamma, beta, g_hat)
    assert bool((r["lhs"] > r["rhs_printed"] + 1e-6 * r["scale"]).all())


@settings(max_examples=20, deadline=None)
@given(**instances, exact_hvp=st.booleans())
def test_theorem_4_2_identity(seed, m, C, d, y_scale, y_offset, gamma_size, exact_hvp):
    x, W, gamma, beta, loss, hvp = layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size)
    y = x @ W
    for j in range(C):
        r = theory.theorem_4_2(y, gamma, beta, loss, j, hvp=hvp if exact_hvp else None)
        assert abs(r["lhs"] - r["rhs"]) <= 1e-7 * r["scale"] + 1e-300, r
        assert r["spread"] < 1e-6


def test_theorem_4_2_check_can_fail():
    """Dropping the mean term (the naive 'BN Hessian = (gamma/sigma)^2 P H P') breaks the identity."""
    x, W, gamma, beta, _, _ = layer_instance(5, 9, 2, 3, 1.0, 2.0, 1.0)
    loss, hvp = theory.smooth_loss("quadratic_softplus", (9, 2), 1)
    r = theory.theorem_4_2(x @ W, gamma, beta, loss, 0, hvp=hvp)
    assert abs(r["lhs"] - r["rhs"]) < 1e-7 * r["scale"]
    assert abs(r["lhs"] - r["curvature_term"]) > 1e-3 * r["scale"]


@pytest.mark.parametrize("kind", theory.SMOOTH_LOSSES)
def test_smooth_losses_gradients_and_hessian_vector_products(kind):
    rng = backend.rng(11)
    z = rng.standard_normal((6, 3)) * 2.0
    loss, hvp = theory.smooth_loss(kind, z.shape, rng)
    value, grad = loss(z)
    report = gradcheck.check_function(lambda: loss(z)[0], {"z": z}, {"z": grad}, n_directions=4, rtol=1e-6)
    assert report.ok, str(report)
    v = rng.standard_normal(z.shape)
    h = 1e-5
    fd = (loss(z + h * v)[1] - loss(z - h * v)[1]) / (2 * h)
    assert theory.relative_error(hvp(z, v), fd) < 1e-7
    assert float(abs(hvp(z, v)).max()) > 1e-3                # the Hessian is not trivial


def test_smooth_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="smooth_loss: kind"):
        theory.smooth_loss("cubic", (3, 2))


@EXAMPLES
@given(**instances)
def test_observation_4_3_gamma_sigma_beta_mu_reproduce_y(seed, m, C, d, y_scale, y_offset, gamma_size):
    x, W, *_ = layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size)
    r = theory.observation_4_3(x @ W)
    assert theory.relative_error(r["z"], r["y"]) < rounding_tolerance(x @ W)


@EXAMPLES
@given(**instances)
def test_theorem_4_4_chain_rule_and_bound(seed, m, C, d, y_scale, y_offset, gamma_size):
    x, W, gamma, beta, loss, _ = layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size)
    r = theory.theorem_4_4(x, W, gamma, beta, loss)
    tol = rounding_tolerance(x @ W)
    assert theory.relative_error(r["code"], r["chain"], r["grad_scale"]) < tol
    assert bool((r["lhs"] <= r["bound"] + tol * r["bound_scale"]).all())


def test_theorem_4_4_code_gradient_is_the_true_gradient():
    x, W, gamma, beta, loss, _ = layer_instance(8, 10, 3, 4, 1.0, 1.0, 1.0)
    r = theory.theorem_4_4(x, W, gamma, beta, loss)

    def L_hat():
        return loss(theory.bn_forward(x @ W, gamma, beta)[0])[0]
    report = gradcheck.check_function(L_hat, {"W": W}, {"W": r["code"]}, n_directions=4, rtol=1e-6)
    assert report.ok, str(report)


def test_theorem_4_4_bound_is_attained_by_the_top_singular_vector():
    """For centred x, W along x's second right singular vector and L = <u1, z> (u1 the top left
    singular vector: orthogonal to 1 and to y_hat, so P u1 = u1), lhs equals the bound."""
    rng = backend.rng(2)
    x = rng.standard_normal((8, 3))
    x -= x.mean(axis=0)
    U, _, Vt = backend.host.linalg.svd(x)
    u1, W = U[:, :1], Vt[1:2].T.copy()
    gamma, beta = backend.host.asarray([1.5]), backend.host.zeros(1)
    r = theory.theorem_4_4(x, W, gamma, beta, lambda z: (float((u1 * z).sum()), u1 + 0.0 * z))
    assert float(r["lhs"][0]) == pytest.approx(float(r["bound"][0]), rel=1e-12)


@EXAMPLES
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.sampled_from([1e-3, 1.0, 1e3]))
def test_lemma_4_5_identity(seed, n, scale):
    rng = backend.rng(seed)
    W0, W_star = rng.standard_normal(n) * scale, rng.standard_normal(n)
    r = theory.lemma_4_5_identity(W0, W_star)
    assert abs(r["lhs"] - r["rhs"]) <= 1e-12 * r["scale"]
    assert r["lhs"] >= 0.0


def test_lemma_4_5_premise_counterexample():
    """One neuron, identity activation, three points: w* optimizes the standard network, yet
    no k w* (k > 0) optimizes the BN network, and the lemma's inequality fails at W0 = w*."""
    r = theory.lemma_4_5_counterexample()
    ex = r["exact"]
    assert theory.relative_error(r["w_star"], backend.host.asarray(ex["w_star"])) < 1e-14
    assert r["standard_grad_norm"] < 1e-12                          # w* is the standard optimum
    assert r["standard_loss"] == pytest.approx(ex["standard_loss"], rel=1e-12)
    for at in r["at_k_w_star"]:
        assert at["bn_loss"] == pytest.approx(ex["bn_loss_on_ray"], rel=1e-12)   # best over gamma, beta
        assert at["grad_gamma_beta"] < 1e-12                        # gamma, beta stationary ...
        assert at["grad_w_norm"] * at["k"] == pytest.approx(r["at_k_w_star"][1]["grad_w_norm"], rel=1e-12)
        assert at["grad_w_norm"] > 0.1 / at["k"]                    # ... but w is not: not a BN optimum
    assert r["bn_opt_loss"] < 1e-25 and r["bn_opt_grad_norm"] < 1e-12   # a strictly better BN optimum
    assert theory.relative_error(r["bn_opt_w"] / r["bn_opt_w"][0], backend.host.asarray([1.0, 1.5])) < 1e-12
    assert r["lemma_lhs"] == pytest.approx(ex["lemma_lhs"], rel=1e-12) and r["lemma_rhs"] == 0.0
    assert not r["premise_holds"]


def test_lemma_4_5_premise_holds_for_centred_inputs():
    """With centred inputs the fits with and without intercept share their slope: the premise holds,
    so the counterexample check is able to say yes."""
    rng = backend.rng(1)
    x = rng.standard_normal((3, 2))
    x -= x.mean(axis=0)
    t = rng.standard_normal(3)
    r = theory.lemma_4_5_premise(x, t)
    assert r["premise_holds"], r
    assert r["at_k_w_star"][1]["grad_w_norm"] < 1e-10


@EXAMPLES
@given(**instances, a=st.sampled_from([1e-3, 0.37, 2.0, 1e4]))
def test_scale_invariance(seed, m, C, d, y_scale, y_offset, gamma_size, a):
    x, W, gamma, beta, loss, _ = layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size)
    r = theory.scale_invariance(x, W, gamma, beta, loss, a)
    tol = rounding_tolerance(x @ W)
    assert theory.relative_error(r["z_scaled"], r["z"]) < tol
    assert r["loss_scaled"] == pytest.approx(r["loss"], rel=tol, abs=tol)
    assert theory.relative_error(r["a_grad_W_scaled"], r["grad_W"], r["grad_scale"]) < tol


def test_statements_on_each_backend(xp):
    """The NumPy and CuPy halves: the same instance gives the same quantities on both."""
    x, W, gamma, beta, loss, hvp = layer_instance(21, 9, 3, 4, 1.0, 1.0, 1.0, xp=xp)
    y = x @ W
    z, _ = theory.bn_forward(y, gamma, beta)
    r41 = theory.theorem_4_1(y, gamma, beta, loss(z)[1])
    assert float(abs(r41["lhs"] - r41["rhs"]).max()) <= 1e-12 * float(r41["scale"].max())
    jac = theory.bn_jacobian(y, gamma, beta)
    assert theory.relative_error(jac["code"], jac["theory"]) < 1e-12
    r42 = theory.theorem_4_2(y, gamma, beta, loss, 1, hvp=hvp)
    assert abs(r42["lhs"] - r42["rhs"]) <= 1e-7 * r42["scale"]
    ref = layer_instance(21, 9, 3, 4, 1.0, 1.0, 1.0)
    ref41 = theory.theorem_4_1(ref[0] @ ref[1], ref[2], ref[3], ref[4](theory.bn_forward(ref[0] @ ref[1], ref[2], ref[3])[0])[1])
    assert theory.relative_error(backend.to_host(r41["lhs"]), ref41["lhs"]) < 1e-12


# --- any normalizer, as a layer or a forward/backward pair -------------------------------------------

np = backend.host

def test_normalizer_projection_of_batchnorm_is_the_theorys_projection():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 2, 2, 3)) * 3.0 + 1.0
    layer = nn.BatchNorm(3, eps=0.0, dtype="float64")
    layer.params["gamma"][:] = [1.5, -0.7, 2.0]
    out = theory.normalizer_projection(layer, x)
    expected = theory.bn_jacobian(x, layer.params["gamma"], layer.params["beta"], numeric=False)["theory"]
    for j in range(3):
        idx = np.arange(x.size).reshape(x.shape)[..., j].ravel()
        np.testing.assert_allclose(out["jacobian"][np.ix_(idx, idx)], expected[j], rtol=1e-10, atol=1e-12)
    _, std, _, m = theory.column_stats(x)
    np.testing.assert_allclose(out["scale"], layer.params["gamma"] / std, rtol=1e-12)
    assert out["m"] == m == 8 and out["rank"].tolist() == [6, 6, 6] and out["cross_column"] == 0.0
    assert max(out["ones"].max(), out["input"].max(), out["symmetric"].max(), out["idempotent"].max()) < 1e-13
    assert out["numeric"] < 1e-7


def test_the_pair_form_gives_the_layers_numbers_and_lp_norm_keeps_only_scale_invariance():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(6, 2)) * 2.0 + 0.5
    gamma, beta = np.array([1.3, -0.4]), np.array([0.2, 0.1])
    pair = (lambda x: batchnorm.forward(x, gamma, beta, 0.0), batchnorm.backward)
    layer = nn.BatchNorm(2, eps=0.0, dtype="float64")
    layer.params["gamma"][:], layer.params["beta"][:] = gamma, beta
    np.testing.assert_allclose(theory.normalizer_projection(pair, x)["jacobian"],
                               theory.normalizer_projection(layer, x)["jacobian"], rtol=1e-12, atol=1e-14)
    inv = theory.normalizer_scale_invariance(pair, x, scales=(0.5, 3.0, np.array([2.0, 7.0])))
    assert inv["max_output_error"] < 1e-14 and inv["max_grad_error"] < 1e-13
    lp = theory.normalizer_projection(nn.LpNorm(2, 2, eps=0.0, dtype="float64"), x)
    assert lp["input"].max() < 1e-13 and lp["ones"].min() > 1e-3 and lp["symmetric"].min() > 1e-3
    # eps > 0 and a layer that is not a normalizer are not scale invariant, and are reported so
    assert theory.normalizer_scale_invariance(nn.BatchNorm(2, dtype="float64"), x * 1e-2)["max_output_error"] > 1e-3
    relu = theory.normalizer_scale_invariance(nn.ReLU(), x, scales=(2.0,))
    assert relu["max_output_error"] == pytest.approx(0.5) and relu["max_grad_error"] == pytest.approx(0.5)


def test_normalizer_arguments_are_checked():
    x = np.ones((3, 2))
    with pytest.raises(TypeError, match="a normalizer is a minibn Layer or a pair \\(forward, backward\\)"):
        theory.normalizer_projection(lambda x: x, x)
    with pytest.raises(ValueError, match="scales must be positive, got -1.0"):
        theory.normalizer_scale_invariance(nn.BatchNorm(2, dtype="float64"), x + np.arange(3)[:, None], scales=(-1.0,))
    with pytest.raises(ValueError, match=r"at most 1024 values; got shape \(1025, 1\)"):
        theory.normalizer_projection(nn.BatchNorm(1, dtype="float64"), np.ones((1025, 1)))


@EXAMPLES
@given(**instances, lr=st.sampled_from([1.0, 0.1, 1e-3]))
def test_weight_feeding_bn_has_orthogonal_gradient_and_gd_grows_its_norm(seed, m, C, d, y_scale, y_offset,
                                                                         gamma_size, lr):
    x, W, gamma, beta, loss, _ = layer_instance(seed, m, C, d, y_scale, y_offset, gamma_size)
    r = theory.weight_gradient_orthogonality(x, W, gamma, beta, loss)
    tol = rounding_tolerance(x @ W)
    assert bool((abs(r["inner"]) <= tol * r["scale"]).all())
    growth = theory.gd_norm_growth(W, r["grad_W_code"], lr, r["grad_bound"])
    assert bool((abs(growth["lhs"] - growth["rhs"]) <= tol * growth["scale"]).all())


def test_orthogonality_and_norm_growth_checks_can_fail():
    """Without BN (the identity in its place) the gradient of a weight is not orthogonal to it,
    and a GD step changes its norm by more than lr^2 ||g||^2."""
    x, W, gamma, beta, loss, _ = layer_instance(5, 12, 3, 4, 1.0, 1.0, 1.0)
    g = x.T @ loss(x @ W)[1]          # dL/dW of x W -> loss, no normalization
    inner = (g * W).sum(axis=0)
    scale = backend.host.sqrt((g * g).sum(axis=0) * (W * W).sum(axis=0))
    assert float((abs(inner) / scale).max()) > 1e-3
    growth = theory.gd_norm_growth(W, g, 0.1)
    assert float((abs(growth["lhs"] - growth["rhs"]) / growth["scale"]).max()) > 1e-4
    r = theory.weight_gradient_orthogonality(x, W, gamma, beta, loss, grad_W=g)
    assert float((abs(r["inner_model"]) / r["scale"]).max()) > 1e-3
