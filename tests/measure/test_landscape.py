"""The landscape probe along the gradient: a quadratic with a known Hessian, bands, non-finite probes."""

import json

import numpy as np
import pytest

from minibn import backend, models, nn, optim
from minibn.measure import landscape
from tests.measure._tiny import assert_untouched, batch, fingerprint, stateful_net


def quadratic(seed=0):
    """L(W) = ||X W - Y||^2 (one bias-free Dense layer, summed squared error): g = 2 X^T (X W - Y)
    and the Hessian acts as H V = 2 X^T X V, so along the gradient
    grad L(W - eta G) - G = -2 eta X^T X G and L(W - eta G) = L - eta ||G||^2 + eta^2 ||X G||^2."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential([nn.Dense(4, 3, bias=False, rng=rng, dtype="float64")])
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 3))
    return model, x, y


def test_beta_on_a_quadratic_is_the_hessian_along_the_gradient():
    model, x, y = quadratic()
    W = model[0].params["W"].copy()
    G = 2 * x.T @ (x @ W - y)
    loss0 = float(((x @ W - y) ** 2).sum())
    hg = 2 * x.T @ x @ G
    etas = [1e-3, 1e-2, 0.1, 1.0]
    out = landscape.probe_gradient_direction(model, nn.squared_error, x, y, etas)
    beta = np.linalg.norm(hg) / np.linalg.norm(G)
    np.testing.assert_allclose(out["beta"], [beta] * 4, rtol=1e-9)
    np.testing.assert_allclose(out["grad_diff"], [e * np.linalg.norm(hg) for e in etas], rtol=1e-9)
    expected_loss = [loss0 - e * (G * G).sum() + e * e * ((x @ G) ** 2).sum() for e in etas]
    np.testing.assert_allclose(out["loss"], expected_loss, rtol=1e-9)
    np.testing.assert_allclose(out["beta_eff"], beta, rtol=1e-9)
    assert out["loss0"] == pytest.approx(loss0, rel=1e-12) and out["grad_norm"] == pytest.approx(np.linalg.norm(G))
    assert out["eta"] == etas and out["nonfinite"] == 0
    # beta_eff never exceeds the top eigenvalue of H = 2 (X^T X kron I)
    assert out["beta_eff"] <= 2 * np.linalg.eigvalsh(x.T @ x)[-1] * (1 + 1e-12)


def test_bands_are_min_and_max_of_the_raw_values():
    model = stateful_net()
    x, y = batch(8, 2)
    out = landscape.probe_gradient_direction(model, nn.squared_error, x, y, [0.01, 0.1, 1.0, 3.0])
    assert out["loss_min"] == min(out["loss"]) and out["loss_max"] == max(out["loss"])
    assert out["gradpred_min"] == min(out["grad_diff"]) and out["gradpred_max"] == max(out["grad_diff"])
    assert out["beta_eff"] == max(out["beta"])
    assert out["loss_min"] < out["loss_max"]


def test_non_finite_probes_are_counted_not_raised():
    model = models.dln(depth=6, width=4, rng=0)
    x, y = batch(10, 4, features=4)
    before = fingerprint(model)
    out = landscape.probe_gradient_direction(model, nn.squared_error, x, y, [1e-3, 1e150, 1e300])
    assert out["nonfinite"] == 2
    assert out["loss"][0] is not None and out["loss"][1:] == [None, None]
    assert out["loss_min"] == out["loss_max"] == out["loss"][0]
    assert out["gradpred_max"] == out["grad_diff"][0] and out["beta_eff"] == out["beta"][0]
    json.dumps(out, allow_nan=False)
    assert_untouched(model, before)
    # nothing finite at all: the bands are None
    out = landscape.probe_gradient_direction(model, nn.squared_error, x, y, [1e300])
    assert out["nonfinite"] == 1 and out["loss_min"] is None and out["beta_eff"] is None


def test_float32_models_are_probed_in_float32():
    model = models.dln(depth=3, width=4, norm="batchnorm", rng=0, dtype="float32")
    x, y = (a.astype("float32") for a in batch(10, 4, features=4))
    before = fingerprint(model)
    out = landscape.probe_gradient_direction(model, nn.squared_error, x, y, [0.01, 0.1])
    assert all(v is not None for v in out["loss"] + out["grad_diff"])
    assert_untouched(model, before)
    assert model.flat_params().dtype == np.float32


def test_leaves_model_untouched(xp):
    model = stateful_net().to(backend.name_of(xp))
    x, y = (backend.to_device(a, xp) for a in batch(8, 2))
    model.value_and_grad(nn.squared_error, x, y, mode="train")
    before = fingerprint(model)
    landscape.probe_gradient_direction(model, nn.squared_error, x, y, [0.01, 0.1, 1.0, 30.0])
    assert_untouched(model, before)


def test_rejects_bad_step_sizes():
    model, x, y = quadratic()
    for etas in ([], [0.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="etas must be a non-empty list of positive step sizes"):
            landscape.probe_gradient_direction(model, nn.squared_error, x, y, etas)


def test_recorder_keeps_every_probe_value():
    model, x, y = quadratic()
    rec = landscape.LandscapeRecorder(nn.squared_error, [0.01, 0.1], every=2)
    rec(0, model, x, y, optim.SGD(model, lr=0.01))
    rec(2, model, x, y, optim.SGD(model, lr=0.01))
    out = rec.result()
    single = landscape.probe_gradient_direction(model, nn.squared_error, x, y, [0.01, 0.1])
    assert out["steps"] == [0, 2] and out["eta"] == [0.01, 0.1]
    for key in landscape.LandscapeRecorder.KEYS:
        assert out[key] == [single[key], single[key]]
    again = landscape.LandscapeRecorder(nn.squared_error, [0.01, 0.1], every=2)
    again.load_state(json.loads(json.dumps(rec.state())))
    assert again.result() == out
