"""Exact Hessian-vector products (the layers' tangent passes, Sequential.hvp) against the full
Hessian built column by column from central differences of the exact gradient, float64.

Every layer sits in a small network; hypothesis draws the shapes, seeds and losses (the registered
normalizers get the same check, through these helpers, in tests/nn/test_registry.py). Kinks are kept
away: a drawn case whose ReLU inputs, pooling windows or Lp maximizers/signs come within MARGIN of a
switch is rejected, and MARGIN is 10^4 times the largest move a difference step of STEP can cause
in them (parameters and activations are O(1)), so no column crosses a kink. Then the exact product
must match every column, and the Hessian made of exact products must be symmetric.
"""

import functools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minibn import backend, nn
from minibn.nn.losses import loss_tangent

STEP = 1e-6
MARGIN = 1e-2
F64 = "float64"

LOSSES = {
    "squared_error": (nn.squared_error, "regression"),
    "squared_error_mean": (functools.partial(nn.squared_error, reduction="mean"), "regression"),
    "softmax_cross_entropy": (nn.softmax_cross_entropy, "labels"),
}


def gradient(model, loss_fn, x, target, mode):
    model.value_and_grad(loss_fn, x, target, mode=mode)
    return model.flat_grads()


def hessian_by_differences(model, loss_fn, x, target, mode="probe", step=STEP):
    """Column i: (g(w + step e_i) - g(w - step e_i)) / (2 step), g minibn's exact gradient."""
    w = model.flat_params()
    columns = []
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = step
        model.set_flat_params(w + e)
        plus = gradient(model, loss_fn, x, target, mode)
        model.set_flat_params(w - e)
        minus = gradient(model, loss_fn, x, target, mode)
        columns.append((plus - minus) / (2 * step))
    model.set_flat_params(w)
    return np.stack(columns, axis=1)


def hessian_by_products(model, loss_fn, x, target, mode="probe"):
    xp = model.xp
    eye = xp.eye(model.num_params)
    tangent = loss_tangent(loss_fn)
    return backend.to_host(xp.stack([model.hvp(loss_fn, x, target, eye[i], mode=mode, loss_tangent=tangent)
                                     for i in range(len(eye))], axis=1))


def kink_margin(model, x, mode="probe"):
    """The smallest distance of the network at x from a switch of a ReLU mask, a pooling argmax
    or an L1/Linf sign or maximizer (inf when it has none)."""
    margin = math.inf
    for layer in model:
        if isinstance(layer, nn.ReLU) or (isinstance(layer, nn.LpNorm) and layer.p == 1):
            margin = min(margin, float(np.abs(x).min()))
        if isinstance(layer, nn.LpNorm) and layer.p == math.inf:
            top = np.sort(np.abs(x.reshape(-1, x.shape[-1])), axis=0)
            margin = min(margin, float((top[-1] - top[-2]).min()), float(top[-1].min()))
        if isinstance(layer, nn.MaxPool2d):
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            n, h, w, c = x.shape
            for i in range(0, h - kh + 1, sh):
                for j in range(0, w - kw + 1, sw):
                    window = np.sort(x[:, i:i + kh, j:j + kw, :].reshape(n, -1, c), axis=1)
                    margin = min(margin, float((window[:, -1] - window[:, -2]).min()))
        x = layer.forward(x, mode)
    return margin


def target_for(kind, out, rng, n):
    return rng.normal(size=(n, out)) if kind == "regression" else rng.integers(0, out, size=n)


def perturb(model, rng, scale=0.3):
    """Move every parameter off its initial value (gamma = 1, beta = 0, zero biases are special points)."""
    for _, _, p in model.parameters():
        p += scale * rng.normal(size=p.shape)
    return model


def dense_sandwich(make_layer, features, rng, out=3):
    """Dense -> layer -> Dense on (N, features) inputs."""
    return nn.Sequential([nn.Dense(features, features, rng=rng, dtype=F64), make_layer(features),
                          nn.Dense(features, out, rng=rng, dtype=F64)])


#: The layers that are not normalizers; every registered normalizer gets this same check in
#: tests/nn/test_registry.py (Dense -> it -> Dense, the same draws).
DENSE_LAYERS = {
    "dense": lambda c: nn.Dense(c, c, dtype=F64),
    "dense_no_bias": lambda c: nn.Dense(c, c, bias=False, dtype=F64),
    "relu": lambda c: nn.ReLU(),
}


def check_against_differences(model, loss_fn, x, target, mode="probe"):
    assume(kink_margin(model, x, mode) > MARGIN)
    H_exact = hessian_by_products(model, loss_fn, x, target, mode)
    H_diff = hessian_by_differences(model, loss_fn, x, target, mode)
    scale = np.abs(H_diff).max()
    np.testing.assert_allclose(H_exact, H_diff, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(H_exact, H_exact.T, rtol=0, atol=1e-12 * scale)
    v = np.random.default_rng(0).normal(size=H_exact.shape[0])
    np.testing.assert_allclose(model.hvp(loss_fn, x, target, v, mode=mode, loss_tangent=loss_tangent(loss_fn)), H_exact @ v,
                               rtol=0, atol=1e-12 * scale * np.abs(v).sum())


@pytest.mark.parametrize("name", sorted(DENSE_LAYERS))
@settings(max_examples=8, deadline=None)
@given(n=st.integers(3, 6), features=st.integers(2, 4), seed=st.integers(0, 2**16), loss=st.sampled_from(sorted(LOSSES)),
       mode=st.sampled_from(["probe", "eval"]))
def test_exact_hvp_of_each_layer_matches_the_differenced_hessian(name, n, features, seed, loss, mode):
    rng = np.random.default_rng(seed)
    model = perturb(dense_sandwich(DENSE_LAYERS[name], features, rng), rng)
    loss_fn, kind = LOSSES[loss]
    x = rng.normal(size=(n, features))
    check_against_differences(model, loss_fn, x, target_for(kind, 3, rng, n), mode)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(2, 3), size=st.integers(4, 5), channels=st.integers(1, 2), kernel=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 1), pool=st.sampled_from([(2, 2), (2, 1), (3, 2)]),
       norm=st.sampled_from([None, "batchnorm", "l2"]), seed=st.integers(0, 2**16), loss=st.sampled_from(sorted(LOSSES)))
def test_exact_hvp_of_a_conv_net_matches_the_differenced_hessian(n, size, channels, kernel, stride, padding, pool,
                                                                 norm, seed, loss):
    """Conv2d (strides, padding) -> [norm] -> ReLU -> MaxPool2d (tiling and overlapping windows) -> Flatten -> Dense."""
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(channels, 2, kernel, stride=stride, padding=padding, rng=rng, dtype=F64)
    x = rng.normal(size=(n, size, size, channels))
    side = (size + 2 * padding - kernel) // stride + 1
    assume(side >= pool[0])
    pooled = (side - pool[0]) // pool[1] + 1
    layers = [conv] + ([] if norm is None else [nn.BatchNorm(2, dtype=F64) if norm == "batchnorm"
                                                else nn.LpNorm(2, 2, dtype=F64)])
    layers += [nn.ReLU(), nn.MaxPool2d(pool[0], pool[1]), nn.Flatten(), nn.Dense(pooled * pooled * 2, 3, rng=rng, dtype=F64)]
    model = perturb(nn.Sequential(layers), rng)
    loss_fn, kind = LOSSES[loss]
    check_against_differences(model, loss_fn, x, target_for(kind, 3, rng, n))


def test_hvp_refuses_bad_vectors_and_layers_without_tangents():
    rng = np.random.default_rng(0)
    model = perturb(dense_sandwich(lambda c: nn.BatchNorm(c, dtype=F64), 3, rng), rng)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    with pytest.raises(nn.LayerError, match="hvp needs a 1-D vector of 30 values"):
        model.hvp(nn.squared_error, x, y, np.ones(5), loss_tangent=loss_tangent(nn.squared_error))

    class Opaque(nn.Layer):   # a layer without tangent passes is named in the refusal
        def _forward(self, x, mode):
            return x, "no tangent"

        def _backward(self, dy, cache):
            return dy, {}

    with pytest.raises(NotImplementedError, match="Opaque: no exact second-order pass"):
        nn.Sequential([model[0], Opaque()]).hvp(nn.squared_error, x, x, np.ones(12), loss_tangent=loss_tangent(nn.squared_error))


def test_noisy_layers_use_the_cached_draws_in_train_mode():
    """In train mode the noise is a fixed affine map at the point: the tangent passes reuse its draws."""
    rng = np.random.default_rng(3)
    for make in (lambda c: nn.NoisyBatchNorm(c, rng=0, dtype=F64), lambda c: nn.NoiseInjection(c, rng=0, dtype=F64)):
        layer = make(3)
        perturb(nn.Sequential([layer]), rng)
        x, x_t, dy, dy_t = (rng.normal(size=(6, 3)) for _ in range(4))
        params_t = {k: rng.normal(size=p.shape) for k, p in layer.params.items()}
        layer.forward(x, "train")
        y_t, tangent_cache = layer.tangent_forward(x_t, params_t)
        dx_t, grads_t = layer.tangent_backward(dy, dy_t, tangent_cache)
        cache = layer._cache   # the same draws, replayed at w +- h along the tangent

        noisy_bn = isinstance(cache, nn.noisy.NoisyCache)
        noise = cache.noise if noisy_bn else cache

        def replay(s):
            moved = {k: p + s * params_t[k] for k, p in layer.params.items()}
            saved, layer.params = layer.params, moved
            try:
                out, probe_cache = layer._forward(x + s * x_t, "probe")   # probe mode draws no noise...
                replayed = nn.noisy.NoisyCache(probe_cache.bn, noise) if noisy_bn else noise
                dx, grads = layer._backward(dy + s * dy_t, replayed)      # ...so the step's draws are put back
                return out * noise.scale, dx, grads                       # (the shift drops out of a difference)
            finally:
                layer.params = saved

        h = 1e-6
        (y_p, dx_p, g_p), (y_m, dx_m, g_m) = replay(h), replay(-h)
        np.testing.assert_allclose(y_t, (y_p - y_m) / (2 * h), atol=1e-7)
        np.testing.assert_allclose(dx_t, (dx_p - dx_m) / (2 * h), atol=1e-7)
        for k in grads_t:
            np.testing.assert_allclose(grads_t[k], (g_p[k] - g_m[k]) / (2 * h), atol=1e-7)


def test_has_tangents_names_what_the_exact_product_needs():
    from minibn.measure import hessian

    class Opaque(nn.Layer):
        def _forward(self, x, mode):
            return x, "no tangent"

        def _backward(self, dy, cache):
            return dy, {}

    rng = np.random.default_rng(1)
    model = dense_sandwich(lambda c: nn.LpNorm(c, 2, dtype=F64), 3, rng)
    assert model.has_tangents and hessian.exact_available(model, nn.squared_error)
    assert not hessian.exact_available(model, lambda pred, target: nn.squared_error(pred, target))
    opaque = nn.Sequential([model[0], Opaque(), model[2]])
    assert not opaque.has_tangents
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    v = rng.normal(size=opaque.num_params)
    # "auto" falls back to the central difference (a smooth network here: the two agree), "exact" refuses
    auto = hessian.hvp(opaque, nn.squared_error, x, y, v)
    np.testing.assert_allclose(auto, hessian.hvp(opaque, nn.squared_error, x, y, v, product="fd"), rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="Opaque"):
        hessian.hvp(opaque, nn.squared_error, x, y, v, product="exact")
