import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibn import backend, nn, optim
from minibn.gradcheck import check_layer
from minibn.nn import batchnorm, noisy

FAST = settings(max_examples=12, deadline=None)
NOISE = dict(n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1)


@st.composite
def inputs(draw):
    if draw(st.booleans()):
        shape = (draw(st.integers(2, 5)), draw(st.integers(1, 3)))
    else:
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(2, 3)), draw(st.integers(1, 3)))
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=shape) * draw(st.sampled_from([0.3, 3.0]))


def reference_draws(seed, shape, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1, dtype=np.float64):
    """Algorithm 1 spelled out element by element, in the documented draw order:
    mu_j, sigma_j (float64 uniforms), then per element u ~ U(0, 1) and z ~ N(0, 1) in ``dtype``."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    mu, sigma = rng.uniform(-n_mu, n_mu, c), rng.uniform(1.0, n_sigma, c)
    u, z = rng.random(shape, dtype=dtype), rng.standard_normal(shape, dtype=dtype)
    shift, scale = np.empty(shape), np.empty(shape)
    for idx in np.ndindex(*shape):
        j = idx[-1]
        shift[idx] = (mu[j] - r_mu) + 2 * r_mu * float(u[idx])     # ~ U(mu_j - r_mu, mu_j + r_mu)
        scale[idx] = sigma[j] + r_sigma * float(z[idx])            # ~ N(sigma_j, r_sigma^2)
    return scale, shift


def draws_of(layer_factory, shape):
    """(scale, shift) a noise layer applies, read off two twins fed 0 and 1 (same seed, same draws)."""
    a, b = layer_factory(), layer_factory()
    zeros = a.forward(np.zeros(shape, a.dtype), "train")
    ones = b.forward(np.ones(shape, b.dtype), "train")
    return ones - zeros, zeros


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 2, 4)])
def test_noise_injection_applies_algorithm_1_with_documented_draws(shape):
    scale, shift = draws_of(lambda: nn.NoiseInjection(shape[-1], rng=42, dtype="float64"), shape)
    ref_scale, ref_shift = reference_draws(42, shape)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-12)
    np.testing.assert_allclose(shift, ref_shift, rtol=1e-12, atol=1e-14)
    x = np.random.default_rng(0).normal(size=shape)
    np.testing.assert_allclose(nn.NoiseInjection(shape[-1], rng=42, dtype="float64").forward(x, "train"),
                               ref_scale * x + ref_shift, rtol=1e-12)


def test_noisy_batchnorm_is_batchnorm_then_noise():
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 2)) * 2 + 1
    layer = nn.NoisyBatchNorm(2, rng=7, dtype="float64")
    layer.params["gamma"][:] = [1.5, -0.5]
    layer.params["beta"][:] = [0.2, 0.1]
    a, cache = batchnorm.forward_inplace(x, layer.params["gamma"], layer.params["beta"], 1e-5)
    scale, shift = reference_draws(7, x.shape)
    np.testing.assert_allclose(layer.forward(x, "train"), scale * a + shift, rtol=1e-12)
    # backward uses the same draws: BN's backward of scale * dy
    dy = np.random.default_rng(2).normal(size=x.shape)
    dx_ref, grads_ref = batchnorm.backward_inplace(scale * dy, cache)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, rtol=1e-12)
    for k in grads_ref:
        np.testing.assert_allclose(layer.grads[k], grads_ref[k], rtol=1e-12)


def test_float32_inputs_get_float32_draws_from_the_same_recipe():
    shape = (3, 2, 2, 4)
    scale, shift = draws_of(lambda: nn.NoiseInjection(4, rng=8, dtype="float32"), shape)
    ref_scale, ref_shift = reference_draws(8, shape, dtype=np.float32)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
    np.testing.assert_allclose(shift, ref_shift, rtol=1e-6, atol=1e-6)


def test_noise_injection_backward_uses_the_same_draws():
    x = np.random.default_rng(3).normal(size=(5, 4))
    scale, _ = reference_draws(11, x.shape)
    layer = nn.NoiseInjection(4, rng=11, dtype="float64")
    layer.forward(x, "train")
    dy = np.random.default_rng(4).normal(size=x.shape)
    np.testing.assert_allclose(layer.backward(dy), scale * dy, rtol=1e-14)
    assert layer.grads == {}


def test_running_statistics_see_the_batch_before_the_noise():
    x = np.random.default_rng(5).normal(size=(8, 3))
    noisy_bn, bn = nn.NoisyBatchNorm(3, rng=0, dtype="float64"), nn.BatchNorm(3, dtype="float64")
    noisy_bn.forward(x, "train")
    bn.forward(x, "train")
    np.testing.assert_array_equal(noisy_bn.running_mean, bn.running_mean)
    np.testing.assert_array_equal(noisy_bn.running_var, bn.running_var)


def test_noise_statistics_match_the_specification():
    """Loose statistical bounds (many samples): ranges and means of the per-unit and per-element draws."""
    rng = np.random.default_rng(123)
    m, units = 400, 2000
    scale, shift = noisy.draw(rng, (m, units), **NOISE)
    # shift_ij ~ U(mu_j - 0.1, mu_j + 0.1): per unit a window of width <= 0.2, nearly filled
    width = shift.max(0) - shift.min(0)
    assert width.max() <= 0.2 and width.min() > 0.18
    mu_hat = (shift.max(0) + shift.min(0)) / 2           # midrange: within ~1e-3 of mu_j
    assert -0.5 - 0.01 < mu_hat.min() < -0.48 and 0.48 < mu_hat.max() < 0.5 + 0.01   # mu_j ~ U(-0.5, 0.5)
    assert abs(mu_hat.mean()) < 0.03                      # sd of the mean: 0.29/sqrt(2000) = 0.0065
    assert abs(mu_hat.var() - 1.0 / 12) < 0.01            # Var U(-0.5, 0.5) = 1/12
    np.testing.assert_allclose(shift.mean(0), mu_hat, atol=0.02)
    # scale_ij ~ N(sigma_j, 0.1^2), sigma_j ~ U(1, 1.25)
    sigma_hat = scale.mean(0)                             # sd 0.1/sqrt(400) = 0.005
    assert 1.0 - 0.025 < sigma_hat.min() < 1.01 and 1.24 < sigma_hat.max() < 1.25 + 0.025
    assert abs(sigma_hat.mean() - 1.125) < 0.01
    sd_hat = scale.std(0, ddof=1)
    assert abs(sd_hat.mean() - 0.1) < 0.003 and sd_hat.min() > 0.07 and sd_hat.max() < 0.13


def test_noise_constants_are_configurable():
    scale, shift = noisy.draw(np.random.default_rng(0), (300, 50), n_mu=2.0, n_sigma=3.0, r_mu=0.0, r_sigma=0.0)
    assert np.all(shift == shift[0]) and np.all(scale == scale[0])   # r = 0: one value per unit
    assert np.all(np.abs(shift[0]) <= 2.0) and np.abs(shift[0]).max() > 1.5
    assert np.all((scale[0] >= 1.0) & (scale[0] <= 3.0)) and scale[0].max() > 2.5


def test_same_seed_identical_draws_different_seed_different_draws():
    x = np.random.default_rng(0).normal(size=(4, 3))
    def run(seed):
        return nn.NoisyBatchNorm(3, rng=seed, dtype="float64").forward(x, "train")
    np.testing.assert_array_equal(run(5), run(5))
    assert not np.allclose(run(5), run(6))
    layer = nn.NoiseInjection(3, rng=5, dtype="float64")
    assert not np.array_equal(layer.forward(x, "train"), layer.forward(x, "train"))   # fresh draws each step


@pytest.mark.parametrize("mode", ["eval", "probe"])
@pytest.mark.parametrize("make", [lambda: nn.NoisyBatchNorm(3, rng=1, dtype="float64"),
                                  lambda: nn.NoiseInjection(3, rng=1, dtype="float64")])
def test_eval_and_probe_add_no_noise_and_change_no_state(make, mode):
    layer = make()
    x = np.random.default_rng(2).normal(size=(2, 2, 2, 3))
    layer.forward(x * 3 + 1, "train")
    before = layer.state()
    y = layer.forward(x, mode)
    after = layer.state()
    assert before["rng"] == after["rng"]                    # the generator was not consumed
    for k in before:
        if k != "rng":
            np.testing.assert_array_equal(before[k], after[k])
    if isinstance(layer, nn.NoisyBatchNorm):
        plain = nn.BatchNorm(3, dtype="float64")
        plain.load_state({k: v for k, v in before.items() if k != "rng"})
        np.testing.assert_array_equal(y, plain.forward(x, mode))
        dy = np.ones_like(y)
        np.testing.assert_allclose(layer.backward(dy), plain.backward(dy), rtol=1e-14)
    else:
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(layer.backward(x), x)
    # the next training step draws exactly what it would have drawn without the probe
    twin = make()
    twin.forward(x * 3 + 1, "train")
    np.testing.assert_array_equal(layer.forward(x, "train"), twin.forward(x, "train"))


@FAST
@given(inputs(), st.sampled_from(["noisy", "noise"]), st.sampled_from(["train", "probe", "eval"]))
def test_backward_matches_gradcheck(x, kind, mode):
    c = x.shape[-1]
    layer = nn.NoisyBatchNorm(c, rng=3, dtype="float64") if kind == "noisy" else nn.NoiseInjection(c, rng=3, dtype="float64")
    for k in layer.params:
        layer.params[k][:] = np.random.default_rng(1).normal(size=c)
    check_layer(layer, x, mode=mode)


def test_state_round_trip_resumes_identical_draws():
    x = np.random.default_rng(0).normal(size=(5, 2))
    layer = nn.NoisyBatchNorm(2, rng=9, dtype="float64")
    layer.forward(x, "train")
    saved = layer.state()
    y1 = layer.forward(x, "train")
    layer.forward(x, "train")
    layer.load_state(saved)
    np.testing.assert_array_equal(layer.forward(x, "train"), y1)
    fresh = nn.NoisyBatchNorm(2, rng=12345, dtype="float64")     # a different seed: the state decides
    fresh.load_state(saved)
    np.testing.assert_array_equal(fresh.forward(x, "train"), y1)
    with pytest.raises(nn.LayerError, match=r"NoisyBatchNorm\(2.*missing 'rng'"):
        fresh.load_state({k: v for k, v in saved.items() if k != "rng"})


def _train(seed, steps, model=None, opt_state=None, model_state=None):
    rng = np.random.default_rng(seed)
    x, target = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    if model is None:
        model = nn.Sequential(nn.Dense(4, 5, rng=seed, dtype="float64"), nn.NoisyBatchNorm(5, rng=seed + 1, dtype="float64"),
                              nn.ReLU(), nn.Dense(5, 5, rng=seed + 2, dtype="float64"),
                              nn.NoiseInjection(5, rng=seed + 3, dtype="float64"), nn.ReLU(),
                              nn.Dense(5, 2, rng=seed + 4, dtype="float64"))
    opt = optim.SGD(model, lr=0.05, momentum=0.9)
    if model_state is not None:
        model.load_state(model_state)
        opt.load_state(opt_state)
    losses = []
    for _ in range(steps):
        losses.append(model.value_and_grad(nn.squared_error, x, target))
        opt.step()
    return model, opt, losses


def test_seed_gives_bit_identical_training_and_checkpoint_resume():
    model_a, _, losses_a = _train(0, 6)
    model_b, _, losses_b = _train(0, 6)
    assert losses_a == losses_b
    np.testing.assert_array_equal(model_a.flat_params(), model_b.flat_params())
    # resume: 3 steps, checkpoint (params + layer state + optimizer state), 3 more steps in a new model
    model_c, opt_c, losses_c = _train(0, 3)
    params, state, opt_state = model_c.flat_params().copy(), model_c.state(), opt_c.state()
    model_d, _, _ = _train(99, 0)                         # different seed, overwritten by the checkpoint
    model_d.set_flat_params(params)
    model_d, _, losses_d = _train(0, 3, model=model_d, opt_state=opt_state, model_state=state)
    assert losses_c + losses_d == losses_a
    np.testing.assert_array_equal(model_d.flat_params(), model_a.flat_params())


def test_float32_stays_float32():
    x = np.random.default_rng(0).normal(size=(2, 2, 2, 3)).astype(np.float32)
    for layer in (nn.NoisyBatchNorm(3, rng=0), nn.NoiseInjection(3, rng=0)):
        y = layer.forward(x, "train")
        dx = layer.backward(np.ones_like(y))
        assert y.dtype == dx.dtype == np.float32
        assert all(g.dtype == np.float32 for g in layer.grads.values())
    layer = nn.NoiseInjection(3, rng=0).astype("float64")
    assert layer.forward(x.astype(np.float64), "train").dtype == np.float64


def test_bad_inputs_and_constants_raise_errors_naming_layer_and_value():
    for kwargs, text in (({"n_mu": -0.1}, "n_mu"), ({"n_sigma": 0.5}, "n_sigma"), ({"r_mu": float("nan")}, "r_mu"),
                         ({"r_sigma": "big"}, "r_sigma")):
        for cls in (nn.NoisyBatchNorm, nn.NoiseInjection):
            with pytest.raises(ValueError, match=f"{cls.__name__}: {text} must be"):
                cls(3, **kwargs)
    with pytest.raises(ValueError, match="NoiseInjection: num_features"):
        nn.NoiseInjection(0)
    layer = nn.NoiseInjection(3)
    with pytest.raises(nn.LayerError, match=r"NoiseInjection\(3.*x must be 2-D or 4-D, got shape \(4,\)"):
        layer.forward(np.zeros(4, np.float32))
    with pytest.raises(nn.LayerError, match=r"NoiseInjection\(3.*x has 2 features/channels.*expected 3"):
        layer.forward(np.zeros((4, 2), np.float32))
    with pytest.raises(nn.LayerError, match=r"NoiseInjection\(3.*x has dtype float64 but the layer's values are float32"):
        layer.forward(np.zeros((4, 3)))
    with pytest.raises(nn.LayerError, match=r"NoiseInjection\(3.*backward called before forward"):
        layer.backward(np.zeros((4, 3), np.float32))
    bn = nn.NoisyBatchNorm(3)
    with pytest.raises(nn.LayerError, match=r"NoisyBatchNorm\(3.*x has dtype float64 but the layer's parameters are float32"):
        bn.forward(np.zeros((4, 3)))
    bn.forward(np.zeros((4, 3), np.float32))
    with pytest.raises(nn.LayerError, match=r"NoisyBatchNorm\(3.*dy of shape \(4, 2\).*\(4, 3\)"):
        bn.backward(np.zeros((4, 2), np.float32))


def test_device_noise_is_seeded_resumable_and_follows_the_specification(xp):
    """On either backend: a seed gives the same draws, the state resumes them, a clone draws
    alike, and the draws have Algorithm 1's ranges (on CuPy they are drawn on the device)."""
    x = backend.to_device(np.zeros((400, 300)), xp)
    def layer(seed):
        return nn.NoiseInjection(300, rng=seed, dtype="float64").to(backend.name_of(xp))
    a, b = layer(21), layer(21)
    first = backend.to_host(a.forward(x, "train"))
    np.testing.assert_array_equal(first, backend.to_host(b.forward(x, "train")))
    saved = a.state()
    second = backend.to_host(a.forward(x, "train"))
    assert not np.array_equal(first, second)
    c = layer(99)
    c.load_state(saved)
    np.testing.assert_array_equal(backend.to_host(c.forward(x, "train")), second)
    twin = a.clone()
    np.testing.assert_array_equal(backend.to_host(twin.forward(x, "train")), backend.to_host(a.forward(x, "train")))
    # zero input: y = shift ~ U(mu_j - 0.1, mu_j + 0.1) with mu_j ~ U(-0.5, 0.5)
    width = first.max(0) - first.min(0)
    assert width.max() <= 0.2 + 1e-12 and width.min() > 0.18 and np.abs(first).max() <= 0.6 + 1e-12
    ones = backend.to_host(layer(5).forward(x + 1.0, "train") - layer(5).forward(x, "train"))
    assert abs(ones.mean() - 1.125) < 0.02 and abs(ones.std(0, ddof=1).mean() - 0.1) < 0.005   # scale ~ N(sigma_j, 0.1^2)


@pytest.mark.cupy
def test_a_gpu_draws_its_own_noise():
    """No host-to-device copy of noise on CuPy (the stand-in counts them); NumPy's draws stay
    those of the host generator (test_noise_injection_applies_algorithm_1_with_documented_draws)."""
    try:
        xp = backend.get("cupy")
    except backend.BackendUnavailable as err:
        pytest.skip(str(err))
    from tests import fakecupy
    if not fakecupy.is_installed():
        pytest.skip("counting copies needs the stand-in (--fake-cupy)")
    layer = nn.NoisyBatchNorm(4, rng=3, dtype="float32").to("cupy")
    x = xp.ones((8, 4), dtype="float32")
    with fakecupy.counting() as counts:
        layer.forward(x, "train")
        layer.forward(x, "train")
    assert counts.total("to_device") == 0 and counts.total("to_host") == 0
