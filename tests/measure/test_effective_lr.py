"""The effective-learning-rate instrument against quantities computed by hand from a real step."""

import math

import numpy as np
import pytest

from minibn import nn, optim, train
from minibn.measure import effective_lr
from tests.measure._tiny import batch


def net(norm=True, eps=1e-5, seed=0):
    rng = np.random.default_rng(seed)
    bn = (lambda c: [nn.BatchNorm(c, eps=eps, dtype="float64")]) if norm else (lambda c: [])
    return nn.Sequential([nn.Dense(3, 5, rng=rng, dtype="float64"), *bn(5), nn.ReLU(),
                          nn.Dense(5, 4, rng=rng, dtype="float64"), *bn(4), nn.ReLU(),
                          nn.Dense(4, 2, rng=rng, dtype="float64")])


def test_layers_feeding_a_normalizer():
    assert effective_lr.normalized_weight_layers(net()) == [0, 3]
    assert effective_lr.normalized_weight_layers(net(norm=False)) == []


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_recorder_matches_the_step_the_optimizer_takes(momentum):
    model = net(eps=0.0)
    x, y = batch(16, 2, seed=3)
    opt = optim.SGD(model, lr=0.3, momentum=momentum)
    model.value_and_grad(nn.squared_error, x, y)    # one step first, so momentum has a buffer
    opt.step()
    rec = effective_lr.EffectiveLRRecorder(nn.squared_error, every=1)
    before = {i: model[i].params["W"].copy() for i in (0, 3)}
    rec(1, model, x, y, opt)
    assert all(np.array_equal(model[i].params["W"], before[i]) for i in (0, 3))   # measuring changed nothing
    model.value_and_grad(nn.squared_error, x, y)
    grads = {i: model[i].grads["W"].copy() for i in (0, 3)}
    opt.step()
    out = rec.result()
    assert out["steps"] == [1] and out["layers"] == [0, 3]
    for j, i in enumerate((0, 3)):
        W0, W1, g = before[i], model[i].params["W"], grads[i]
        assert out["norm"][0][j] == pytest.approx(np.linalg.norm(W0), rel=1e-14)
        assert out["eff_lr"][0][j] == pytest.approx(0.3 / np.linalg.norm(W0) ** 2, rel=1e-14)
        cos = np.vdot(W0, W1) / (np.linalg.norm(W0) * np.linalg.norm(W1))
        assert out["angle"][0][j] == pytest.approx(math.acos(cos), rel=1e-6)
        assert out["grad_cos"][0][j] == pytest.approx(np.vdot(g, W0) / (np.linalg.norm(g) * np.linalg.norm(W0)),
                                                      abs=1e-12)
        assert abs(out["grad_cos"][0][j]) < 1e-12   # eps = 0: exactly scale-invariant
        if momentum == 0.0:   # plain GD: the norm grows by lr^2 ||g||^2
            assert np.linalg.norm(W1) ** 2 == pytest.approx(np.linalg.norm(W0) ** 2 + 0.09 * np.linalg.norm(g) ** 2,
                                                            rel=1e-12)


def test_without_normalization_the_gradient_is_not_orthogonal():
    model = net(norm=False)
    x, y = batch(16, 2, seed=3)
    model.value_and_grad(nn.squared_error, x, y)
    g, W = model[0].grads["W"], model[0].params["W"]
    assert abs(effective_lr.step_geometry(W, -0.1 * g, g)["grad_cos"]) > 1e-3


def test_small_angles_are_accurate():
    W = np.array([[1.0, 0.0], [0.0, 0.0]])
    u = np.array([[0.0, 1e-9], [0.0, 0.0]])
    assert effective_lr.step_geometry(W, u, u)["angle"] == pytest.approx(1e-9, rel=1e-12)


def test_recorder_in_training_and_resume_state():
    model = net()
    x, y = batch(16, 2, seed=3)
    rec = effective_lr.EffectiveLRRecorder(nn.squared_error, every=2)
    out = train.train(model, nn.squared_error, train.FullBatch(x, y), optim.SGD(model, 0.1), 5, callbacks=[rec],
                      progress=False)
    res = out["callbacks"]["effective_lr"]
    assert res["steps"] == [0, 2, 4] and len(res["norm"]) == 3 and len(res["norm"][0]) == 2
    norms = np.asarray(res["norm"])
    assert (np.diff(norms, axis=0) > 0).all()   # plain GD on scale-invariant weights: norms only grow
