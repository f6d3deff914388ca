"""Tiny float64 networks and helpers shared by the instrument tests."""

import numpy as np

from minibn import backend, nn, optim


def smooth_bn_net(seed=0, dtype="float64"):
    """Dense -> BN -> Dense -> BN -> Dense: smooth in every parameter (no ReLU kinks), 3 blocks."""
    rng = np.random.default_rng(seed)
    return nn.Sequential([
        nn.Dense(3, 4, rng=rng, dtype=dtype), nn.BatchNorm(4, dtype=dtype),
        nn.Dense(4, 3, rng=rng, dtype=dtype), nn.BatchNorm(3, dtype=dtype),
        nn.Dense(3, 2, rng=rng, dtype=dtype),
    ])


def stateful_net(seed=0, dtype="float64"):
    """Every kind of state an instrument must not touch: BN running statistics, noisy BN's
    running statistics and generator, a ReLU; trained two steps so the state is not at its start."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential([
        nn.Dense(3, 5, rng=rng, dtype=dtype), nn.BatchNorm(5, dtype=dtype), nn.ReLU(),
        nn.Dense(5, 4, rng=rng, dtype=dtype), nn.NoisyBatchNorm(4, rng=seed + 1, dtype=dtype), nn.ReLU(),
        nn.Dense(4, 2, rng=rng, dtype=dtype),
    ])
    x, y = batch(8, 2, seed + 2, dtype)
    opt = optim.SGD(model, lr=0.05)
    for _ in range(2):
        model.value_and_grad(nn.squared_error, x, y, mode="train")
        opt.step()
    return model


def batch(n=6, out=2, seed=1, dtype="float64", features=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(dtype), rng.normal(size=(n, out)).astype(dtype)


def flat_grad(model, loss_fn, x, y):
    """The probe-mode gradient at the model's current parameters (flat)."""
    model.value_and_grad(loss_fn, x, y, mode="probe")
    return model.flat_grads()


def hessian_by_differences(model, loss_fn, x, y, eps=1e-6):
    """The full Hessian as the central-difference Jacobian of the gradient, one coordinate at a time."""
    w = model.flat_params()
    xp = backend.array_module(w)
    cols = []
    for j in range(w.size):
        step = xp.zeros_like(w)
        step[j] = eps
        model.set_flat_params(w + step)
        plus = flat_grad(model, loss_fn, x, y)
        model.set_flat_params(w - step)
        minus = flat_grad(model, loss_fn, x, y)
        cols.append((plus - minus) / (2 * eps))
    model.set_flat_params(w)
    h = xp.stack(cols, axis=1)
    return (h + h.T) / 2


def _same(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}/{i}")
    elif hasattr(a, "dtype") and hasattr(a, "shape"):
        a, b = backend.to_host(a), backend.to_host(b)
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=True), f"{where}: values changed"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def fingerprint(model):
    """What must survive a measurement bit for bit: parameters (values and identity),
    state (running statistics, noise generators) and the gradient dicts."""
    return {
        "params": [(id(p), p.copy()) for _, _, p in model.parameters()],
        "state": model.state(),
        "grads": [(id(layer.grads), {k: g.copy() for k, g in layer.grads.items()}) for layer in model],
    }


def assert_untouched(model, before):
    after = fingerprint(model)
    assert [i for i, _ in before["params"]] == [id(p) for _, _, p in model.parameters()], "parameter arrays replaced"
    _same([p for _, p in before["params"]], [p for _, p in after["params"]], "params")
    _same(before["state"], after["state"], "state")
    assert [i for i, _ in before["grads"]] == [i for i, _ in after["grads"]], "grads dicts replaced"
    _same([g for _, g in before["grads"]], [g for _, g in after["grads"]], "grads")
