import numpy as np
import pytest

from minibn import nn
from minibn.optim import SGD


def net_with_grads(seed=0):
    net = nn.Sequential(nn.Dense(3, 2, rng=seed, dtype="float64"), nn.ReLU(), nn.BatchNorm(2, dtype="float64"))
    set_grads(net, seed + 1)
    return net


def set_grads(net, seed):
    rng = np.random.default_rng(seed)
    for layer in net:
        layer.grads = {k: rng.normal(size=v.shape) for k, v in layer.params.items()}


def snapshot(net):
    return {(i, k): v.copy() for i, k, v in net.parameters()}


def test_plain_sgd_is_p_minus_lr_g_in_place():
    net = net_with_grads()
    p0, ids = snapshot(net), [id(v) for _, _, v in net.parameters()]
    SGD(net, lr=0.1).step()
    for i, k, v in net.parameters():
        np.testing.assert_allclose(v, p0[(i, k)] - 0.1 * net[i].grads[k], rtol=1e-15)
    assert [id(v) for _, _, v in net.parameters()] == ids


def test_weight_decay_and_momentum_by_hand():
    net = net_with_grads()
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.01)
    p0 = snapshot(net)
    g1 = {(i, k): net[i].grads[k].copy() for i, k, _ in net.parameters()}
    opt.step()
    set_grads(net, 7)
    g2 = {(i, k): net[i].grads[k].copy() for i, k, _ in net.parameters()}
    opt.step()
    for key, p in p0.items():
        v1 = g1[key] + 0.01 * p
        p1 = p - 0.1 * v1
        v2 = 0.9 * v1 + (g2[key] + 0.01 * p1)
        p2 = p1 - 0.1 * v2
        np.testing.assert_allclose(net[key[0]].params[key[1]], p2, rtol=1e-14)


def test_updates_return_the_step_without_applying_or_mutating():
    net = net_with_grads()
    opt = SGD(net, lr=0.1, momentum=0.5)
    opt.step()
    set_grads(net, 3)
    p, velocity = snapshot(net), {k: v.copy() for k, v in opt.velocity.items()}
    ups = opt.updates()
    ups_half = opt.updates(lr=0.05)
    assert sorted(ups) == [0, 2] and sorted(ups[0]) == ["W", "b"]
    for (i, k), v in p.items():                            # nothing applied
        np.testing.assert_array_equal(net[i].params[k], v)
        np.testing.assert_allclose(ups_half[i][k], 0.5 * ups[i][k], rtol=1e-15)
    for k, v in velocity.items():                          # momentum buffers untouched
        np.testing.assert_array_equal(opt.velocity[k], v)
    opt.step()
    for (i, k), v in p.items():                            # and they are exactly what step() adds
        np.testing.assert_allclose(net[i].params[k], v + ups[i][k], rtol=1e-15, atol=1e-17)


def test_state_resume_matches_an_uninterrupted_run():
    a, b = net_with_grads(), net_with_grads()
    opt_a = SGD(a, lr=0.1, momentum=0.9)
    opt_a.step()
    opt_b = SGD(b, lr=0.1, momentum=0.9)
    opt_b.step()
    resumed = SGD(b, lr=0.1, momentum=0.9)
    resumed.load_state(opt_b.state())
    set_grads(a, 5)
    set_grads(b, 5)
    opt_a.step()
    resumed.step()
    np.testing.assert_array_equal(a.flat_params(), b.flat_params())


def test_float32_stays_float32_and_list_of_layers():
    layer = nn.Dense(2, 2, rng=0)
    layer.grads = {k: np.ones_like(v) for k, v in layer.params.items()}
    SGD([layer], lr=0.5, momentum=0.9, weight_decay=0.1).step()
    assert layer.params["W"].dtype == np.float32


def test_errors():
    for kwargs, name in (({"lr": -1}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": 0.1, "momentum": -0.5}, "momentum"),
                         ({"lr": 0.1, "weight_decay": "x"}, "weight_decay")):
        with pytest.raises(ValueError, match=f"SGD: {name} must be a finite number >= 0"):
            SGD([], **kwargs)
    net = nn.Sequential(nn.Dense(2, 2, rng=0))
    with pytest.raises(ValueError, match=r"SGD: Dense\(2, 2, bias=True\) \(layer 0\) has no gradient for 'W'"):
        SGD(net, lr=0.1).step()
